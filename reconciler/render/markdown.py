"""The pull-request comment: a summary table per environment, details folded.

GitHub rejects comment bodies over 65,536 characters; we stop adding details well
before that and say so, so the comment always posts.
"""

from __future__ import annotations

from reconciler.plan import Plan
from reconciler.render._common import SYMBOLS, change_lines, short, summary_line

MARKER = "<!-- reconciler:plan -->"
MAX_CHARS = 65_536
_RESERVE = 600  # room for the truncation note and closing tags


def render_markdown(plan: Plan, *, max_chars: int = MAX_CHARS) -> str:
    head = [MARKER, f"### reconciler plan for `{short(plan.commit)}`"]
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
