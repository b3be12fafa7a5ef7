"""`approvals` reports: a verdict per environment, the JSON document, the status line."""

from __future__ import annotations

import json as _json
from typing import Any

from reconciler.commands.approvals import ApprovalsReport
from reconciler.gate import GateResult
from reconciler.views.text import join_lines


def human(report: ApprovalsReport) -> str:
    lines: list[str] = []
    if not report.verdicts:
        lines.append("no environment has changes: nothing needs approval")
    for e, g in report.verdicts.items():
        if g.passed and g.verdict is None:
            lines.append(f"{e}: no approvals required")
        elif g.passed:
            lines.append(f"{e}: approved: {g.verdict.summary() if g.verdict else ''}")
        else:
            lines.append(f"{e}: BLOCKED: {'; '.join(g.reasons)}")
        if g.verdict is not None:
            lines.extend(f"    {line}" for line in g.verdict.explain())
    return join_lines(lines)


def document(report: ApprovalsReport) -> dict[str, Any]:
    return {
        "commit": report.commit,
        "pull_request": report.pull_request,
        "passed": report.passed,
        "environments": {e: g.document() for e, g in report.verdicts.items()},
    }


def json(report: ApprovalsReport) -> str:
    return _json.dumps(document(report), indent=2, sort_keys=True) + "\n"


def status_description(report: ApprovalsReport) -> str:
    """What the `reconciler/approvals` commit status says (the forge cuts it to 140)."""
    if not report.blocked:
        return (
            "approved for " + ", ".join(report.verdicts)
            if report.verdicts
            else ("nothing needs approval")
        )
    return "; ".join(f"{e}: {_reason(report.verdicts[e])}" for e in report.blocked)


def _reason(g: GateResult) -> str:
    return g.verdict.summary() if g.verdict is not None else "; ".join(g.reasons)


def posted(report: ApprovalsReport) -> str:
    """The stderr note after `--status`."""
    if report.posted is None:
        return ""
    return f"status reconciler/approvals set on {report.posted.sha[:7]}: {report.posted.state}\n"
