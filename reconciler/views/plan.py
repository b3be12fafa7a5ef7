"""The plan, three ways: human (terminal), JSON (docs/plan-format.md), Markdown (PR comment).

GitHub rejects comment bodies over 65,536 characters; the Markdown stops adding details
well before that and says so, so the comment always posts.
"""

from __future__ import annotations

import io
import json as _json

from rich.console import Console
from rich.text import Text

from reconciler.forge import PLAN_COMMENT_MARKER as PLAN_COMMENT_MARKER
from reconciler.plan import Plan
from reconciler.views.text import STYLES, SYMBOLS, change_lines, short, summary_line

MAX_COMMENT_CHARS = 65_536
_RESERVE = 600  # room for the truncation note and closing tags


def human(plan: Plan, *, color: bool = False, width: int = 100) -> str:
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


def json(plan: Plan) -> str:
    """docs/plan-format.md, format_version 1, stable key order."""
    return _json.dumps(plan.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def markdown(plan: Plan, *, max_chars: int = MAX_COMMENT_CHARS) -> str:
    """The pull-request comment: a summary table per environment, details folded."""
    head = [PLAN_COMMENT_MARKER, f"### reconciler plan for `{short(plan.commit)}`"]
    if plan.dirty:
        head.append("_The working tree had uncommitted changes._")
    head += [
        "",
        "| Environment | Create | Update | Replace | Delete | Unchanged |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e in plan.environments:
        c = e.counts()
        name = f"**{e.environment}**" + (" 🔒" if e.protected else "")
        head.append(
            f"| {name} | {c['create']} | {c['update']} | {c['replace']} | {c['delete']} "
            f"| {e.unchanged} |"
        )
    head.append("")
    if not plan.has_changes:
        head.append("No changes. The recorded state matches the manifests.")
        return "\n".join(head) + "\n"
    body = "\n".join(head) + "\n"
    budget = max_chars - _RESERVE
    omitted = 0
    for e in plan.environments:
        if not e.changes:
            continue
        opening = f"<details><summary>{e.environment}: {summary_line(e)}</summary>\n\n```diff\n"
        closing = "```\n\n</details>\n\n"
        if len(body) + len(opening) + len(closing) > budget:
            omitted += len(e.changes)
            continue
        body += opening
        for ch in e.changes:
            sym = SYMBOLS[ch.action]
            prefix = {"create": "+", "delete": "-", "update": "!", "replace": "!"}[ch.action]
            lines = [f"{prefix} {sym} {ch.address} ({ch.provider}, risk {ch.risk})"]
            lines.extend(f"#     {line}" for line in change_lines(ch))
            text = "\n".join(lines) + "\n"
            if len(body) + len(text) + len(closing) > budget:
                omitted += 1
                continue
            body += text
        body += closing
    if omitted:
        body += (
            f"> ⚠️ Details of {omitted} change{'s' if omitted != 1 else ''} omitted: the comment "
            "would exceed GitHub's 65,536-character limit. Run `reconciler plan` locally or "
            "see the job log for the full plan.\n"
        )
    return body
