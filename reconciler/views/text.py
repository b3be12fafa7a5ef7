"""What the views share: change symbols, flattening and value formatting."""

from __future__ import annotations

import difflib
import json
from typing import Any

from reconciler.plan import Change, EnvironmentPlan

SYMBOLS = {"create": "+", "update": "~", "replace": "-/+", "delete": "-"}
STYLES = {"create": "green", "update": "yellow", "replace": "magenta", "delete": "red"}
#: Templates longer than this are shown as a unified diff rather than before → after.
LONG_TEXT = 60


def short(sha: str | None) -> str:
    return sha[:7] if sha else "(no commit)"


def fmt(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


def is_long(value: Any) -> bool:
    return isinstance(value, str) and (len(value) > LONG_TEXT or "\n" in value)


def text_diff(before: Any, after: Any) -> list[str]:
    a = before.splitlines() if isinstance(before, str) else []
    b = after.splitlines() if isinstance(after, str) else []
    return list(difflib.unified_diff(a, b, "before", "after", lineterm="", n=1))


def flatten(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Leaves of a body as (dotted path, value); a prompt shows as name@version."""
    out: list[tuple[str, Any]] = []
    if isinstance(data, dict):
        if prefix == "prompt" and {"name", "version"} <= set(data):
            out.append(("prompt", f"{data['name']}@{data['version']}"))
            return out
        for k in sorted(data):
            out.extend(flatten(data[k], f"{prefix}.{k}" if prefix else str(k)))
        if not data and prefix:
            out.append((prefix, {}))
    else:
        out.append((prefix, data))
    return out


def summary_line(e: EnvironmentPlan) -> str:
    c = e.counts()
    if not e.changes:
        return f"no changes ({e.unchanged} unchanged)"
    return (
        f"{c['create']} to create, {c['update']} to update, {c['replace']} to replace, "
        f"{c['delete']} to delete, {e.unchanged} unchanged"
    )


def change_lines(ch: Change) -> list[str]:
    """The detail lines of one change (without its header), plain text."""
    lines: list[str] = []
    if ch.reason:
        lines.append(f"# {ch.reason}")
    if ch.refused:
        lines.append(f"# refused: {ch.refused}")
    if ch.action == "create":
        for path, value in flatten(ch.after or {}):
            if path in ("name", "environment"):
                continue
            lines.append(f"{path}: {fmt(value)}")
    elif ch.action == "delete":
        pass
    else:
        for d in ch.diff:
            if is_long(d.before) or is_long(d.after):
                lines.append(f"{d.path}:")
                lines.extend("  " + line for line in text_diff(d.before, d.after))
            else:
                lines.append(f"{d.path}: {fmt(d.before)} → {fmt(d.after)}")
    if ch.next_runs and ch.after is not None:
        from datetime import datetime

        from reconciler.schedules import format_both

        zone = str(ch.after.get("timezone") or "UTC")
        lines.extend(
            f"# next run: {format_both(datetime.fromisoformat(t), zone)}" for t in ch.next_runs
        )
    return lines


def join_lines(lines: list[str]) -> str:
    """Lines as printed text, each ending in a newline."""
    return "".join(line + "\n" for line in lines)
