"""`schedules` reports: next fire times per environment, local and UTC."""

from __future__ import annotations

import json as _json
from typing import Any

from reconciler.engine.schedules import SchedulesReport
from reconciler.views.text import join_lines


def document(report: SchedulesReport) -> list[dict[str, Any]]:
    return [r.document() for r in report.rows]


def json(report: SchedulesReport) -> str:
    return _json.dumps(document(report), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def human(report: SchedulesReport) -> str:
    if not report.rows:
        return "No schedules recorded.\n"
    lines: list[str] = []
    current = None
    for r in report.rows:
        if r.record.environment != current:
            current = r.record.environment
            lines.append(f"{current}:")
        how = r.record.spec.get("cron") or f"every {r.record.spec.get('interval')}"
        lines.append(
            f"  {r.record.name} → {r.record.spec.get('deployment')}  {how} ({r.timezone})"
            + ("" if r.enabled else "  disabled")
        )
        lines.extend(f"      {d['text']}" for d in r.document()["next_runs"])
    return join_lines(lines)
