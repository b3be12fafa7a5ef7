"""The plan, three ways: human (terminal), JSON (docs/plan-format.md), Markdown (PR comment).

GitHub rejects comment bodies over 65,536 characters; the Markdown stops adding details
well before that and says so, so the comment always posts.
"""

from __future__ import annotations

import io
import json as _json

from rich.cells import cell_len
from rich.console import Console
from rich.control import STRIP_CONTROL_CODES, strip_control_codes
from rich.text import Text

from reconciler.forge import PLAN_COMMENT_MARKER as PLAN_COMMENT_MARKER
from reconciler.plan import Change, EnvironmentPlan, Plan
from reconciler.views.text import STYLES, SYMBOLS, change_lines, short, summary_line

MAX_COMMENT_CHARS = 65_536
_RESERVE = 600  # room for the truncation note and closing tags


#: A line of the human plan: (text, rich style) pieces.
Line = list[tuple[str, str]]


def human(plan: Plan, *, color: bool = False, width: int = 100) -> str:
    """Plain text unless `color` (the CLI passes color only on a TTY or when forced).

    Written in one piece: plain text is joined directly (printing 200,000 lines one by
    one through rich took most of a large first plan's time) and is exactly what rich
    prints without color (control codes it strips are stripped, tabs expanded alike);
    with color, rich renders each environment as one Text."""
    if color:
        return _colored(plan, width)
    lines = [_head(plan)]
    for e in plan.environments:
        lines += ["", _title(e), *policy_lines(e)]
        for ch in e.changes:
            lines.append(_change_head(ch))
            lines += change_lines(ch, DETAIL_INDENT)
    lines += ["", _total(plan)]
    text = "\n".join(lines) + "\n"
    if any(chr(code) in text for code in STRIP_CONTROL_CODES):  # rare; a scan is cheap
        text = strip_control_codes(text)
    if "\t" in text:
        text = "\n".join(_expand_tabs(line) if "\t" in line else line for line in text.split("\n"))
    return text


DETAIL_INDENT = " " * 8


def _colored(plan: Plan, width: int) -> str:
    buf = io.StringIO()
    con = Console(
        file=buf,
        force_terminal=True,
        color_system="standard",
        width=width,
        soft_wrap=True,
        highlight=False,
    )
    for block in _blocks(plan):
        text = Text()
        for line in block:
            for piece, style in line:
                text.append(piece, style=style or None)
            text.append("\n")
        con.print(text, end="")
    return buf.getvalue()


def _expand_tabs(line: str, size: int = 8) -> str:
    """Tabs to spaces up to the next multiple of `size` terminal cells (as rich does)."""
    out: list[str] = []
    cells = 0
    *parts, last = line.split("\t")
    for part in parts:
        cells += cell_len(part) + 1
        pad = -cells % size
        out.append(part + " " * (1 + pad))
        cells += pad
    out.append(last)
    return "".join(out)


def _head(plan: Plan) -> str:
    head = f"Plan for commit {short(plan.commit)}"
    if plan.ref:
        head += f" (ref {plan.ref})"
    if plan.dirty:
        head += " + uncommitted changes in the working tree"
    return head


def _title_parts(e: EnvironmentPlan) -> Line:
    return [
        (e.environment, "bold"),
        (f" (serial {e.serial}{', protected' if e.protected else ''}): ", ""),
        (summary_line(e), "dim" if not e.changes else ""),
    ]


def _title(e: EnvironmentPlan) -> str:
    return "".join(piece for piece, _ in _title_parts(e))


def _change_parts(ch: Change) -> Line:
    return [
        (f"  {SYMBOLS[ch.action]:>3} ", STYLES[ch.action]),
        (ch.address, "bold"),
        (f"  ({ch.provider}, risk {ch.risk})", "dim"),
    ]


def _change_head(ch: Change) -> str:
    return f"  {SYMBOLS[ch.action]:>3} {ch.address}  ({ch.provider}, risk {ch.risk})"


def policy_lines(e: EnvironmentPlan, indent: str = "    ") -> list[str]:
    """Under an environment's title: what the gate will need, and the policy changes
    (where its data would go next)."""
    out: list[str] = []
    if e.gate is not None and (
        e.gate.get("required") or e.gate.get("window") or e.gate.get("promotion")
    ):
        out.append(f"  {e.gate['summary']}")
    if not e.policy_changes:
        return out
    out += [
        f"  ~ policy of {e.environment}: judged as a policy change (both policies, risk "
        "critical); nothing is applied for it, it takes effect with the next applied change"
    ]
    for d in e.policy_changes:
        out.append(f"{indent}{_policy_path(d.path)}: {_show(d.before)} -> {_show(d.after)}")
    return out


def _policy_path(path: str) -> str:
    """`providers.registry.config.baseUrl` reads as `provider registry: config.baseUrl`."""
    parts = path.split(".")
    if parts[0] == "providers" and len(parts) > 1:
        rest = ".".join(parts[2:]) or "(all settings)"
        return f"provider {parts[1]}: {rest}"
    if parts[0] == "environment":
        return ".".join(parts[1:]) or "environment"
    return path


def _show(value: object) -> str:
    return "(none)" if value is None else _json.dumps(value, sort_keys=True, ensure_ascii=False)


def _total(plan: Plan) -> str:
    total = sum(len(e.changes) for e in plan.environments)
    refused = sum(1 for e in plan.environments for c in e.changes if c.refused)
    policies = [e.environment for e in plan.environments if e.policy_changes]
    if total == 0 and policies:
        return (
            "No changes to apply. The policy of "
            + ", ".join(policies)
            + " changes (see above): it takes effect with the next applied change."
        )
    if total == 0:
        return "No changes. The recorded state matches the manifests."
    msg = f"{total} change{'s' if total != 1 else ''} in total."
    if refused:
        msg += f" {refused} refused (see above)."
    return msg


def _blocks(plan: Plan) -> list[list[Line]]:
    """The colored plan: the head, one block per environment, and the totals."""
    blocks: list[list[Line]] = [[[(_head(plan), "bold")]]]
    for e in plan.environments:
        lines: list[Line] = [[], _title_parts(e)]
        lines.extend([(line, "yellow")] for line in policy_lines(e))
        for ch in e.changes:
            lines.append(_change_parts(ch))
            lines.extend(
                [(detail, _detail_style(detail.removeprefix(DETAIL_INDENT)))]
                for detail in change_lines(ch, DETAIL_INDENT)
            )
        blocks.append(lines)
    blocks.append([[], [(_total(plan), "")]])
    return blocks


def _detail_style(detail: str) -> str:
    if detail.startswith("  +") and not detail.startswith("  +++"):
        return "green"
    if detail.startswith("  -") and not detail.startswith("  ---"):
        return "red"
    if detail.startswith("# refused"):
        return "bold red"
    if detail.startswith("#"):
        return "dim"
    return ""


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
    for e in plan.environments:
        if said := policy_lines(e):
            head += [f"**{e.environment}**", "```diff", *(line.strip() for line in said), "```", ""]
    if not plan.has_changes:
        head.append(_total(plan))
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
            lines.extend(change_lines(ch, "#     "))
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
