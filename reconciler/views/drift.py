"""`drift` reports: in sync / drifted per environment, field by field."""

from __future__ import annotations

import json as _json
from typing import Any

from reconciler.drift import DriftReport
from reconciler.log import redact_data
from reconciler.views.text import fmt, join_lines


def human(report: DriftReport) -> str:
    lines: list[str] = []
    for e, items in report.environments.items():
        bad = [i for i in items if i.status != "in-sync"]
        lines.append(f"{e}: {len(items) - len(bad)} in sync, {len(bad)} drifted")
        for i in bad:
            lines.append(
                f"  {i.address} ({i.provider}): {i.status}" + (f": {i.error}" if i.error else "")
            )
            lines.extend(
                f"      {d.path}: recorded {fmt(d.before)}, live {fmt(d.after)}" for d in i.diff
            )
    return join_lines(lines)


def document(report: DriftReport) -> dict[str, Any]:
    """The `drift --json` document, secrets masked in every string and key (the text
    pass at the boundary cannot see a value that JSON escaped)."""
    doc: dict[str, Any] = redact_data(
        {
            e: [
                {
                    "kind": i.key.kind,
                    "name": i.key.name,
                    "provider": i.provider,
                    "status": i.status,
                    "error": i.error,
                    "diff": [
                        {"path": d.path, "before": d.before, "after": d.after} for d in i.diff
                    ],
                }
                for i in items
            ]
            for e, items in report.environments.items()
        }
    )
    return doc


def json(report: DriftReport) -> str:
    return _json.dumps(document(report), indent=2, sort_keys=True) + "\n"
