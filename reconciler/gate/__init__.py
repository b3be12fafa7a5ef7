"""The gate: may an environment's changes be applied now? Nothing it judges by may come
from the change it judges (docs/design.md, "The gate").

Split in two: `facts.py` reads what the verdict depends on (the recorded state, the
deploy branch's history, the forge's answers) once per environment, and `judge.py`
decides over those facts, purely: the **policies in force** (the policy of record, or
with none recorded the policies the deploy branch's history left in force), the
**deploy windows** of each, and **change-set coverage** (every commit that reaches the
environment belongs to a pull request merged into the deploy branch, whose merge result
is applied and whose approvals satisfy every policy). Any forge error while gathering
blocks that environment with the reason.
"""

from __future__ import annotations

from reconciler.gate.facts import DEPLOY_BRANCH_VAR, FactsBuilder, SourceFor
from reconciler.gate.judge import Coverage, Facts, GateResult, Mode, judge, windows_of
from reconciler.plan import EnvironmentPlan
from reconciler.policy import Policy

__all__ = [
    "DEPLOY_BRANCH_VAR",
    "Coverage",
    "Facts",
    "Gate",
    "GateResult",
    "Mode",
    "Policy",
    "SourceFor",
    "judge",
    "windows_of",
]


class Gate(FactsBuilder):
    """Judges the environments of one command's plan: the facts, then the verdict."""

    def check(self, plan: EnvironmentPlan) -> GateResult:
        """Approvals and deploy windows."""
        return judge(self.gather(plan, windows=True))

    def check_approvals(self, plan: EnvironmentPlan) -> GateResult:
        """Approvals only (what a pull request shows before merge; windows apply later)."""
        return judge(self.gather(plan, windows=False))
