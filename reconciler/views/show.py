"""`show` reports: one run, its changes and their field-level diffs."""

from __future__ import annotations

import json as _json
from typing import Any

from reconciler.engine.history import HistoryReport
from reconciler.engine.show import RunReport
from reconciler.views import history
from reconciler.views.text import SYMBOLS, fmt, join_lines


def document(report: RunReport) -> dict[str, Any]:
    return report.document()


def json(report: RunReport) -> str:
    return _json.dumps(document(report), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def human(report: RunReport) -> str:
    lines = history.human(HistoryReport([report.row])).splitlines()
    for c in report.run.changes:
        sym = SYMBOLS.get(c.action, "?")
        line = f"  {sym:>3} {c.key.address}  {c.outcome}"
        lines.append(line + (f": {c.error}" if c.error else ""))
        lines.extend(f"        {d['path']}: {fmt(d['before'])} → {fmt(d['after'])}" for d in c.diff)
    return join_lines(lines)
