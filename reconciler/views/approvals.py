"""`approvals` reports: a verdict per environment, the JSON document, the status line."""

from __future__ import annotations

import json as _json
from typing import Any

from reconciler.approvals.evaluate import Verdict
from reconciler.engine.approvals import ApprovalsReport
from reconciler.engine.approve import ApproveReport
from reconciler.gate import GateResult
from reconciler.views.text import join_lines


def human(report: ApprovalsReport) -> str:
    lines: list[str] = []
    if not report.verdicts:
        lines.append("no environment has changes: nothing needs approval")
    for e, g in report.verdicts.items():
        verdicts = _verdicts(g)
        if g.passed and not verdicts:
            lines.append(f"{e}: no approvals required")
        elif g.passed:
            lines.append(f"{e}: approved: {verdicts[-1].summary()}")
        else:
            lines.append(f"{e}: BLOCKED: {'; '.join(g.reasons)}")
        if len(verdicts) == 2:  # the change alters the policy: judged by both, say both
            for label, v in zip(POLICY_LABELS, verdicts, strict=True):
                lines.append(f"    {label}:")
                lines.extend(f"      {line}" for line in v.explain())
        elif verdicts:
            lines.extend(f"    {line}" for line in verdicts[0].explain())
        if not g.passed:
            lines.extend(f"    next: {fix}" for fix in dict.fromkeys(g.fixes))
    return join_lines(lines)


#: How each verdict is introduced when a change alters the policy (record, then new).
POLICY_LABELS = ("Under the policy of record", "Under the policy this change sets")


def _verdicts(g: GateResult) -> list[Verdict]:
    """The verdicts to explain: one per policy the change is judged by (both when it
    alters the policy), from the last commit judged; else the one verdict recorded."""
    last = g.coverage[-1] if g.coverage else None
    if g.policy_changed and last is not None and len(last.verdicts) == 2:
        return list(last.verdicts)
    return [g.verdict] if g.verdict is not None else []


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
    verdicts = _verdicts(g)
    return verdicts[-1].summary() if verdicts else "; ".join(g.reasons)


def posted(report: ApprovalsReport) -> str:
    """The stderr note after `--status`."""
    if report.posted is None:
        return ""
    return f"status reconciler/approvals set on {report.posted.sha[:7]}: {report.posted.state}\n"


def approved(report: ApproveReport) -> str:
    """What `approve` recorded, and where."""
    what = "updated" if report.updated else "recorded"
    commits = f"{report.commits} commit{'s' if report.commits != 1 else ''}"
    return (
        f"{what}: {report.reviewer} approved pull request #{report.pull_request} "
        f"by {report.author} (head {report.head_sha[:7]}, merged as "
        f"{report.merge_commit_sha[:7]}, {commits})\n"
        f"in {report.path}\n"
        "next: reconciler approvals, then reconciler apply\n"
    )
