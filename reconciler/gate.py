"""The gate: may this environment's changes be applied now?

Two independent checks, both failing closed: the approval policy, judged only from the
forge API's answer about the commit's pull request (never from git), and the deploy
windows. An environment whose gate fails is blocked (exit 3), with what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from reconciler import schedules
from reconciler.approvals import ApprovalSource
from reconciler.approvals.evaluate import Verdict, evaluate
from reconciler.approvals.facts import PullRequestFacts
from reconciler.errors import ApprovalSourceError
from reconciler.manifests.models import EnvironmentSpec
from reconciler.plan import EnvironmentPlan


@dataclass
class GateResult:
    environment: str
    passed: bool
    #: One line per reason the environment is blocked.
    reasons: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    window: schedules.WindowVerdict | None = None
    #: True when a closed window was overridden (recorded in the run).
    window_overridden: bool = False


def windows_of(spec: EnvironmentSpec) -> list[schedules.Window]:
    out = []
    for w in spec.windows:
        duration = schedules.parse_duration(w.duration)
        if w.allow is not None:
            out.append(schedules.Window("allow", w.allow, duration, w.timezone))
        elif w.deny is not None:
            out.append(schedules.Window("deny", w.deny, duration, w.timezone))
    return out


class Gate:
    """Judges environments for one commit; the forge is asked at most once."""

    def __init__(
        self,
        source: ApprovalSource | None,
        *,
        commit: str | None,
        pull_request: int | None = None,
        is_rollback: bool = False,
        now: datetime,
        override_window: bool = False,
    ) -> None:
        self.source = source
        self.commit = commit
        self.pull_request = pull_request
        self.is_rollback = is_rollback
        self.now = now
        self.override_window = override_window
        self._facts: PullRequestFacts | None = None
        self._asked = False
        self._error: str | None = None

    def facts(self) -> PullRequestFacts | None:
        """The pull request's facts (None for a direct push). Raises if the API failed."""
        if not self._asked:
            self._asked = True
            try:
                if self.source is None:
                    self._facts = None
                elif self.pull_request is not None:
                    self._facts = self.source.pull_request(self.pull_request)
                elif self.commit is not None:
                    self._facts = self.source.pull_request_for_commit(self.commit)
            except ApprovalSourceError as e:
                self._error = e.message
        if self._error is not None:
            raise ApprovalSourceError(self._error)
        return self._facts

    def check(self, plan: EnvironmentPlan, spec: EnvironmentSpec) -> GateResult:
        result = GateResult(plan.environment, passed=True)
        self._check_window(result, spec)
        self._check_approvals(result, plan, spec)
        result.passed = not result.reasons
        return result

    def check_approvals(self, plan: EnvironmentPlan, spec: EnvironmentSpec) -> GateResult:
        """Approvals only (what a pull request shows before merge; windows apply later)."""
        result = GateResult(plan.environment, passed=True)
        self._check_approvals(result, plan, spec)
        result.passed = not result.reasons
        return result

    def _check_window(self, result: GateResult, spec: EnvironmentSpec) -> None:
        if not spec.windows:
            return
        wv = schedules.evaluate_windows(windows_of(spec), self.now)
        result.window = wv
        if wv.open:
            return
        if self.override_window and spec.allow_override:
            result.window_overridden = True
            return
        zone = wv.window.timezone if wv.window else "UTC"
        reopen = (
            f"; it opens at {schedules.format_both(wv.next_open, zone)}"
            if wv.next_open is not None
            else ""
        )
        hint = (
            " (use --override-window in an emergency: it is recorded)"
            if spec.allow_override
            else " (this environment does not allow --override-window)"
            if self.override_window
            else ""
        )
        result.reasons.append(f"outside its deploy window: {wv.reason}{reopen}{hint}")

    def _check_approvals(
        self, result: GateResult, plan: EnvironmentPlan, spec: EnvironmentSpec
    ) -> None:
        policy = spec.approvals
        risk = plan.max_risk
        needed = policy.required_for(risk, is_rollback=self.is_rollback)
        if needed == 0:
            return
        if self.source is None:
            result.reasons.append(
                f"needs {needed} approval{'s' if needed != 1 else ''} but no approval source "
                "is configured (set approvals.source in reconciler.yaml)"
            )
            return
        try:
            facts = self.facts()
        except ApprovalSourceError as e:
            result.reasons.append(f"cannot read approvals, refusing: {e.message}")
            return
        assert self.source is not None
        verdict = evaluate(
            policy,
            facts,
            risk=risk,
            is_rollback=self.is_rollback,
            is_member=self.source.is_member,
        )
        result.verdict = verdict
        if not verdict.passed:
            if facts is None:
                result.reasons.append(
                    f"needs {needed} approval{'s' if needed != 1 else ''}, but commit "
                    f"{(self.commit or '')[:7]} has no merged pull request (a direct push)"
                )
            else:
                result.reasons.append(verdict.summary())
