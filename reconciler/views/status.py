"""`status` reports: what is recorded where, and when schedules run next."""

from __future__ import annotations

import json as _json
from typing import Any

from reconciler.engine.status import StatusReport
from reconciler.views.text import join_lines


def human(report: StatusReport) -> str:
    if not report.rows:
        return "Nothing recorded yet: run `reconciler apply`.\n"
    lines = []
    current = None
    for r in report.rows:
        doc = r.document()
        if r.key.environment != current:
            current = r.key.environment
            lines.append(f"{current}:")
        what = r.model or (r.schedule.deployment if r.schedule else None) or ""
        line = (
            f"  {r.key.kind.lower()}.{r.key.name:<28} {r.provider:<10} {what:<22} "
            f"{(r.commit or '-')[:7]}  {doc['applied_at'][:19]}Z  {r.health_text:<11}"
        )
        if r.health is not None and r.health.health != "Healthy" and r.health.message:
            line += f" ({r.health.message})"
        elif r.health_error:
            line += f" ({r.health_error})"
        if r.schedule is not None:
            nxt = doc.get("next_run_local") or "never"
            line += f"  next: {nxt}" if r.schedule.enabled else "  (disabled)"
        lines.append(line.rstrip())
    return join_lines(lines)


def document(report: StatusReport) -> list[dict[str, Any]]:
    return [r.document() for r in report.rows]


def json(report: StatusReport) -> str:
    return _json.dumps(document(report), indent=2, sort_keys=True) + "\n"
