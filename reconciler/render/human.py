"""The terminal rendering: one block per environment, `+ ~ -/+ -`, field diffs."""

from __future__ import annotations

import io

from rich.console import Console
from rich.text import Text

from reconciler.plan import Plan
from reconciler.render._common import STYLES, SYMBOLS, change_lines, short, summary_line


def render_human(plan: Plan, *, color: bool = False, width: int = 100) -> str:
    """Plain text unless `color` (the CLI passes color only on a TTY or when forced)."""
    buf = io.StringIO()
    con = Console(
        file=buf,
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
        width=width,
        soft_wrap=True,
        highlight=False,
    )
    head = f"Plan for commit {short(plan.commit)}"
    if plan.ref:
        head += f" (ref {plan.ref})"
    if plan.dirty:
        head += " + uncommitted changes in the working tree"
    con.print(Text(head, style="bold"))
    for e in plan.environments:
        con.print()
        title = Text(f"{e.environment}", style="bold")
        title.append(f" (serial {e.serial}{', protected' if e.protected else ''}): ", style="")
        title.append(summary_line(e), style="dim" if not e.changes else "")
        con.print(title)
        for ch in e.changes:
            sym = SYMBOLS[ch.action]
            line = Text(f"  {sym:>3} ", style=STYLES[ch.action])
            line.append(ch.address, style="bold")
            line.append(f"  ({ch.provider}, risk {ch.risk})", style="dim")
            con.print(line)
            for detail in change_lines(ch):
                style = ""
                if detail.startswith("  +") and not detail.startswith("  +++"):
                    style = "green"
                elif detail.startswith("  -") and not detail.startswith("  ---"):
                    style = "red"
                elif detail.startswith("# refused"):
                    style = "bold red"
                elif detail.startswith("#"):
                    style = "dim"
                con.print(Text(f"        {detail}", style=style))
    con.print()
    total = sum(len(e.changes) for e in plan.environments)
    refused = sum(1 for e in plan.environments for c in e.changes if c.refused)
    if total == 0:
        con.print("No changes. The recorded state matches the manifests.")
    else:
        msg = f"{total} change{'s' if total != 1 else ''} in total."
        if refused:
            msg += f" {refused} refused (see above)."
        con.print(msg)
    return buf.getvalue()
