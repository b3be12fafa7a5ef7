"""`drift` reports: in sync / drifted per environment, field by field."""

from __future__ import annotations

import json as _json
from collections import Counter
from typing import Any

from reconciler.drift import DriftReport
from reconciler.instances import InstanceKey
from reconciler.redaction import Redactor
from reconciler.views.text import fmt, join_lines


def health_note(report: DriftReport, key: InstanceKey) -> str:
    """`; <health>: <message>` for an instance that is not Healthy ("" when it is)."""
    h = report.health.get(key)
    if h is not None:
        return (
            ""
            if h.health == "Healthy"
            else f"; {h.health}" + (f": {h.message}" if h.message else "")
        )
    why = report.health_errors.get(key)
    return f"; health unknown: {why}" if why else ""


def human(report: DriftReport) -> str:
    lines: list[str] = []
    for e, items in report.environments.items():
        bad = [i for i in items if i.status != "in-sync"]
        head = f"{e}: {len(items) - len(bad)} in sync, {len(bad)} drifted"
        healths = Counter(report.health[i.key].health for i in items if i.key in report.health)
        if healths:
            head += "; " + ", ".join(f"{n} {h}" for h, n in sorted(healths.items()))
        lines.append(head)
        for i in items:
            note = health_note(report, i.key)
            if i.status == "in-sync" and not note:
                continue
            lines.append(
                f"  {i.address} ({i.provider}): {i.status}"
                + (f": {i.error}" if i.error else "")
                + note
            )
            lines.extend(
                f"      {d.path}: recorded {fmt(d.before)}, live {fmt(d.after)}" for d in i.diff
            )
    return join_lines(lines)


def document(report: DriftReport, redactor: Redactor) -> dict[str, Any]:
    """The `drift --json` document, the session's secrets masked in every string and key
    (the text pass at the boundary cannot see a value that JSON escaped)."""
    doc: dict[str, Any] = redactor.redact_data(
        {
            e: [
                {
                    "kind": i.key.kind,
                    "name": i.key.name,
                    "provider": i.provider,
                    "status": i.status,
                    "error": i.error,
                    "health": h.health if (h := report.health.get(i.key)) else None,
                    "health_message": h.message if h else report.health_errors.get(i.key),
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


def json(report: DriftReport, redactor: Redactor) -> str:
    return _json.dumps(document(report, redactor), indent=2, sort_keys=True) + "\n"
