"""`rollback` results: the revert commit, what it reverts, where it went."""

from __future__ import annotations

from reconciler.engine.rollback import RollbackResult
from reconciler.views.text import join_lines


def human(r: RollbackResult) -> str:
    where = f" on branch {r.branch}" if r.branch else ""
    lines = [f"{r.commit[:12]} {r.subject}{where}"]
    lines.extend(f"  reverts {sha[:12]}" for sha in r.reverted)
    if r.pushed:
        lines.append(f"pushed {r.branch or 'the current branch'} to origin")
    if r.pull_request is not None:
        lines.append(f"pull request #{r.pull_request}: {r.pull_request_url}")
    elif not r.branch:
        lines.append("next: reconciler plan, then reconciler apply (recorded as a rollback)")
    return join_lines(lines)
