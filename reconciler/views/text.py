"""What the views share: change symbols, detail lines and value formatting."""

from __future__ import annotations

import difflib
import json
from json.encoder import encode_basestring
from typing import Any

from reconciler.plan import Change, EnvironmentPlan

SYMBOLS = {"create": "+", "update": "~", "replace": "-/+", "delete": "-"}
STYLES = {"create": "green", "update": "yellow", "replace": "magenta", "delete": "red"}
#: Templates longer than this are shown as a unified diff rather than before → after.
LONG_TEXT = 60


def short(sha: str | None) -> str:
    return sha[:7] if sha else "(no commit)"


#: Made once: json.dumps with options builds a new encoder per call (slow per line).
_VALUE = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


def fmt(value: Any) -> str:
    """A value as JSON (text quoted, non-ASCII as is); fast for the common leaf types,
    since a large plan formats hundreds of thousands of them."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if value is None:
        return "(none)"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float and value - value == 0.0:  # finite: JSON writes repr (NaN, inf differ)
        return float.__repr__(value)
    return _VALUE.encode(value)


def is_long(value: Any) -> bool:
    return isinstance(value, str) and (len(value) > LONG_TEXT or "\n" in value)


def text_diff(before: Any, after: Any) -> list[str]:
    a = before.splitlines() if isinstance(before, str) else []
    b = after.splitlines() if isinstance(after, str) else []
    return list(difflib.unified_diff(a, b, "before", "after", lineterm="", n=1))


#: Top-level fields a create does not list (the header names them).
_NOT_SHOWN = frozenset({"name", "environment"})
_NOTHING: frozenset[str] = frozenset()


def _leaf_lines(
    data: dict[str, Any],
    prefix: str,
    indent: str,
    out: list[str],
    hide: frozenset[str],
) -> None:
    """`path: value` for every leaf under `data`, keys sorted at each level; a prompt
    shows as name@version, an empty mapping as `{}`. Keys in `hide` are left out
    unless they hold a non-empty mapping."""
    put = out.append
    head = f"{indent}{prefix}." if prefix else indent
    for k in sorted(data):
        value = data[k]
        if not isinstance(value, dict):
            if k in hide:
                continue
            # text is most leaves: encoded here rather than through fmt's dispatch
            put(f"{head}{k}: {encode_basestring(value) if type(value) is str else fmt(value)}")
        elif not prefix and k == "prompt" and "name" in value and "version" in value:
            ref = f"{value['name']}@{value['version']}"
            put(f"{indent}prompt: {fmt(ref)}")
        elif not value:
            if k not in hide:
                put(f"{head}{k}: {{}}")
        else:
            _leaf_lines(value, f"{prefix}.{k}" if prefix else str(k), indent, out, _NOTHING)


def summary_line(e: EnvironmentPlan) -> str:
    c = e.counts()
    if not e.changes:
        return f"no changes ({e.unchanged} unchanged)"
    return (
        f"{c['create']} to create, {c['update']} to update, {c['replace']} to replace, "
        f"{c['delete']} to delete, {e.unchanged} unchanged"
    )


def change_lines(ch: Change, indent: str = "") -> list[str]:
    """The detail lines of one change (without its header), plain text, each after
    `indent` (a large plan has hundreds of thousands: made directly, never twice)."""
    lines: list[str] = []
    if ch.reason:
        lines.append(f"{indent}# {ch.reason}")
    if ch.refused:
        lines.append(f"{indent}# refused: {ch.refused}")
    if ch.action == "create":
        _leaf_lines(ch.after or {}, "", indent, lines, _NOT_SHOWN)
    elif ch.action == "delete":
        pass
    else:
        for d in ch.diff:
            if is_long(d.before) or is_long(d.after):
                lines.append(f"{indent}{d.path}:")
                lines.extend(f"{indent}  {line}" for line in text_diff(d.before, d.after))
            else:
                lines.append(f"{indent}{d.path}: {fmt(d.before)} → {fmt(d.after)}")
    if ch.next_runs and ch.after is not None:
        from datetime import datetime

        from reconciler.schedules import format_both

        zone = str(ch.after.get("timezone") or "UTC")
        lines.extend(
            f"{indent}# next run: {format_both(datetime.fromisoformat(t), zone)}"
            for t in ch.next_runs
        )
    return lines


def join_lines(lines: list[str]) -> str:
    """Lines as printed text, each ending in a newline."""
    return "".join(line + "\n" for line in lines)
