"""Approvals as a pure function of facts: the policy, the facts a forge reports, and
the gate's verdict. Nothing here talks to a network (`reconciler.forge` does), so the
manifest models can embed the policy without loading an HTTP client.

Usage by the gate:

    source = reconciler.forge.make_source(settings)     # an ApprovalSource, or None
    facts = source.pull_request_for_commit(sha)          # None: a direct push
    verdict = evaluate(policy, facts, risk=..., is_rollback=..., is_member=source.membership)

Any `ApprovalSourceError` means the forge could not be asked: fail closed.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from reconciler.approvals.evaluate import IsMember, Verdict, evaluate
from reconciler.approvals.facts import CommitFacts, PullRequestFacts, Review
from reconciler.approvals.policy import ApprovalPolicy, RollbackPolicy

__all__ = [
    "ApprovalPolicy",
    "ApprovalSource",
    "CommitFacts",
    "IsMember",
    "PullRequestFacts",
    "Review",
    "RollbackPolicy",
    "Verdict",
    "evaluate",
]


@runtime_checkable
class ApprovalSource(Protocol):
    """What the gate reads: a commit's pull request, its facts, team membership."""

    kind: str

    def pull_request_for_commit(self, sha: str) -> PullRequestFacts | None: ...

    def pull_requests_for_commit(self, sha: str) -> list[int]:
        """Every pull request the forge associates with `sha` (merged or not): the gate
        decides which of them may count for it."""
        ...

    def pull_request(self, number: int) -> PullRequestFacts: ...

    def default_branch(self) -> str:
        """The repository's default branch: the deploy branch unless configured."""
        ...

    def membership(self, org: str, team: str, user: str) -> str:
        """ "active", "pending" or "none"."""
        ...

    def is_member(self, org: str, team: str, user: str) -> bool: ...

    def close(self) -> None: ...
