"""`history` reports: runs newest first, with approvers and rollback links."""

from __future__ import annotations

import json as _json
from typing import Any

from reconciler.commands.history import HistoryReport
from reconciler.views.text import join_lines

#: Run details worth a line of their own when set.
FLAGS = ("override_window", "broke_lock")


def human(report: HistoryReport) -> str:
    if not report.rows:
        return "No runs recorded yet.\n"
    lines = []
    for row in report.rows:
        run = row.run
        c = row.counts
        commit = (run.commit or "-------")[:7]
        subject = f" {row.subject}" if row.subject else ""
        lines.append(
            f"{run.id}  {run.environment:<12} {run.trigger:<8} {run.outcome:<8} {commit}{subject}"
        )
        who = ""
        if run.pull_request is not None:
            who = f"PR #{run.pull_request} by {run.author or '?'}"
            who += f", approved by {', '.join(run.approvers)}" if run.approvers else ""
        counts = f"+{c['create']} ~{c['update']} -/+{c['replace']} -{c['delete']}" + (
            f" failed {c['failed']}" if c["failed"] else ""
        )
        lines.append(f"    {counts}" + (f"  {who}" if who else ""))
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
