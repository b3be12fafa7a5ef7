"""The approval policy an Environment declares (`spec.approvals`).

Self-contained on purpose: the Environment model embeds it, and the gate evaluates it
without importing the manifest models.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field, StringConstraints

from reconciler._strict import StrictModel, typed_text
from reconciler.vocabulary import Risk

#: A user (`alice`, `@alice`, `dependabot[bot]`) or a team (`@org/team`; on GitLab
#: `@group/subgroup[/…]`). A team always starts with `@` and has a `/`.
APPROVER_PATTERN = (
    r"^(@?[A-Za-z0-9][A-Za-z0-9._-]*(\[bot\])?"
    r"|@[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)+)$"
)
_TEAM = re.compile(r"^@([^/]+)/(.+)$")


Approver = Annotated[str, BeforeValidator(typed_text), StringConstraints(pattern=APPROVER_PATTERN)]
Count = Annotated[int, Field(ge=0)]


class RollbackPolicy(StrictModel):
    """What a pull request that reverts (a rollback) needs instead of the normal policy."""

    required: Count
    #: None inherits the environment's approvers; [] means anyone with a review.
    approvers: list[Approver] | None = None


class ApprovalPolicy(StrictModel):
    """How many approvals a change to an environment needs, and from whom."""

    required: Count = 0
    approvers: list[Approver] = Field(default_factory=list)
    allow_self_approval: bool = False
    fresh_only: bool = True
    by_risk: dict[Risk, Count] = Field(default_factory=dict)
    rollback: RollbackPolicy | None = None

    def required_for(self, risk: str, *, is_rollback: bool = False) -> int:
        """Rollbacks use their own count (no byRisk); otherwise byRisk only raises."""
        if is_rollback and self.rollback is not None:
            return self.rollback.required
        raised = next((n for r, n in self.by_risk.items() if r == risk), 0)
        return max(self.required, raised)

    def approvers_for(self, *, is_rollback: bool = False) -> list[str]:
        if is_rollback and self.rollback is not None and self.rollback.approvers is not None:
            return list(self.rollback.approvers)
        return list(self.approvers)


def split_approver(approver: str) -> tuple[str, str | None]:
    """`alice`/`@alice` → ("alice", None); `@org/team/sub` → ("org", "team/sub")."""
    m = _TEAM.match(approver)
    if m:
        return m.group(1), m.group(2)
    return approver.removeprefix("@"), None
