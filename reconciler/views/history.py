"""`history` reports: runs newest first, with approvers and rollback links."""

from __future__ import annotations

import json as _json
from typing import Any

from reconciler.engine.history import HistoryReport
from reconciler.views.text import join_lines

#: Run details worth a line of their own when set.
FLAGS = ("override_window", "broke_lock")


HEADER = ("RUN", "ENVIRONMENT", "TRIGGER", "OUTCOME", "COMMIT", "APPLIED BY", "CHANGES")


def human(report: HistoryReport) -> str:
    if not report.rows:
        return "No runs recorded yet.\n"
    table = [HEADER] + [
        (
            row.run.id,
            row.run.environment,
            row.run.trigger,
            row.run.outcome,
            (row.run.commit or "—")[:7],
            row.applied_by or "—",
            row.summary,
        )
        for row in report.rows
    ]
    widths = [max(len(cells[i]) for cells in table) for i in range(len(HEADER) - 1)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) + "  " + cells[-1]

    lines = [line(HEADER)]
    for row, cells in zip(report.rows, table[1:], strict=True):
        run = row.run
        lines.append(line(cells))
        about = [row.subject] if row.subject else []
        if run.pull_request is not None:
            pr = f"PR #{run.pull_request} by {run.author or '?'}"
            pr += f", approved by {', '.join(run.approvers)}" if run.approvers else ""
            about.append(pr)
        if about:
            lines.append("    " + " · ".join(about))
        if run.trigger == "rollback" and run.reverted_commits:
            undone = ", ".join(s[:7] for s in run.reverted_commits)
            runs = ", ".join(run.reverted_runs) or "no recorded run"
            lines.append(f"    rolls back {undone} (applied by {runs})")
        lines.extend(f"    {flag.replace('_', ' ')}" for flag in FLAGS if run.details.get(flag))
    return join_lines(lines)


def document(report: HistoryReport) -> list[dict[str, Any]]:
    return [r.document() for r in report.rows]


def json(report: HistoryReport) -> str:
    return _json.dumps(document(report), indent=2, sort_keys=True) + "\n"
