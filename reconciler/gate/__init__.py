"""The gate: may an environment's changes be applied now? Nothing it judges by may come
from the change it judges (docs/design.md, "The gate").

Per environment: the **policy of record** (recorded by its last applied run, else the
deploy branch's before the change; a change to the policy must satisfy both the old and
the new one and counts as critical), the **deploy windows** of each, and **change-set
coverage**: every commit since the recorded state that changes the environment must be
part of a pull request that is merged into the deploy branch, whose merge result is being
applied, and whose approvals (of its final head) satisfy the policy. Any forge error
while judging an environment blocks that environment with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from reconciler import schedules
from reconciler.approvals import ApprovalSource
from reconciler.approvals.evaluate import Verdict, evaluate
from reconciler.approvals.facts import PullRequestFacts
from reconciler.config import ApprovalsConfig, Settings
from reconciler.errors import GitError, ReconcilerError
from reconciler.gate.history import History
from reconciler.gate.policy import Policy
from reconciler.gitrepo import ManifestRepo
from reconciler.load import Loaded
from reconciler.manifests.models import EnvironmentSpec
from reconciler.plan import EnvironmentPlan, make_plan
from reconciler.state.base import StateStore
from reconciler.vocabulary import Risk, as_risk, highest_risk

__all__ = ["Coverage", "Gate", "GateResult", "Mode", "Policy", "windows_of"]

#: `apply` deploys a commit; `preview` judges a pull request's head before its merge
#: (`reconciler approvals`, the commit status); `working_tree` is `watch --apply`.
Mode = Literal["apply", "preview", "working_tree"]
#: The approval source for an approval configuration (None: `source: none`).
SourceFor = Callable[[ApprovalsConfig], ApprovalSource | None]
DEPLOY_BRANCH_VAR = "RECONCILER_DEPLOY_BRANCH"


def windows_of(spec: EnvironmentSpec) -> list[schedules.Window]:
    out = []
    for w in spec.windows:
        duration = schedules.parse_duration(w.duration)
        if w.allow is not None:
            out.append(schedules.Window("allow", w.allow, duration, w.timezone))
        elif w.deny is not None:
            out.append(schedules.Window("deny", w.deny, duration, w.timezone))
    return out


@dataclass
class Coverage:
    """One commit that changes the environment, and the pull request covering it."""

    commit: str
    pull_request: int | None = None
    #: The covering (or last candidate) pull request's verdict under each policy.
    verdicts: list[Verdict] = field(default_factory=list)
    #: Why candidate pull requests did not count.
    problems: list[str] = field(default_factory=list)

    @property
    def covered(self) -> bool:
        return self.pull_request is not None

    def document(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "pullRequest": self.pull_request,
            "covered": self.covered,
            "verdicts": [v.as_dict() for v in self.verdicts],
            "problems": list(self.problems),
        }


@dataclass
class GateResult:
    environment: str
    passed: bool
    #: One line per reason the environment is blocked.
    reasons: list[str] = field(default_factory=list)
    #: The verdict on the pull request that brought the target commit (what the run
    #: records as its pull request and approvers).
    verdict: Verdict | None = None
    window: schedules.WindowVerdict | None = None
    #: True when a closed window was overridden (recorded in the run).
    window_overridden: bool = False
    policy: Policy | None = None
    #: True when the change alters the policy (judged by both, as critical).
    policy_changed: bool = False
    #: The policy this change would leave in force (recorded by its run).
    new_policy: dict[str, Any] | None = None
    risk: Risk = "low"
    rollback: bool = False
    coverage: list[Coverage] = field(default_factory=list)

    @property
    def approvers(self) -> list[str]:
        """Everyone whose approval counted, over every covering pull request."""
        seen: dict[str, None] = {}
        for c in self.coverage:
            if c.covered:
                for v in c.verdicts:
                    seen.update(dict.fromkeys(v.approved_by))
        return list(seen)

    def document(self) -> dict[str, Any]:
        """`approvals --json`: the policy of record and where it came from, the commits
        covered and by which pull request, who counted, who did not and why."""
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "verdict": self.verdict.as_dict() if self.verdict else None,
            "risk": self.risk,
            "rollback": self.rollback,
            "policy": None
            if self.policy is None
            else {
                "origin": self.policy.origin,
                "changed": self.policy_changed,
                "document": self.policy.document,
            },
            "coverage": [c.document() for c in self.coverage],
        }


class Gate:
    """Judges the environments of one command's plan; forge answers are cached."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: StateStore,
        target: Loaded,
        source_for: SourceFor,
        now: datetime,
        mode: Mode = "apply",
        pull_request: int | None = None,
        reverts_exactly: bool = False,
        override_window: bool = False,
        secret_env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.target = target
        self.mode: Mode = mode
        self.hint = pull_request
        self.now = now
        self.reverts_exactly = reverts_exactly
        self.override_window = override_window
        self.secret_env = dict(secret_env or {})
        self.repo = ManifestRepo(settings.repo)
        self.history = History(settings, self.repo)
        self.history.remember(target)
        self._source_for = source_for
        self._sources: dict[tuple[str, str | None], ApprovalSource | None] = {}
        self._pulls: dict[tuple[int, int], PullRequestFacts] = {}
        self._branches: dict[int, str] = {}

    @property
    def commit(self) -> str | None:
        """The commit judged (None: the working tree outside git, or `watch --apply`)."""
        return None if self.mode == "working_tree" or self.target.dirty else self.target.commit

    def close(self) -> None:
        for source in self._sources.values():
            if source is not None:
                source.close()

    # -- the verdict -----------------------------------------------------------------

    def check(self, plan: EnvironmentPlan) -> GateResult:
        """Approvals and deploy windows."""
        return self._judge(plan, windows=True)

    def check_approvals(self, plan: EnvironmentPlan) -> GateResult:
        """Approvals only (what a pull request shows before merge; windows apply later)."""
        return self._judge(plan, windows=False)

    def _judge(self, plan: EnvironmentPlan, *, windows: bool) -> GateResult:
        env = plan.environment
        result = GateResult(env, passed=False)
        try:
            new = Policy(
                self.target.desired.policy(env), self.target.approvals, "the change itself"
            )
            result.new_policy = new.document
            record = self._policy_of_record(env) or Policy(
                new.spec, new.approvals, "the change itself (nothing recorded before it)"
            )
            result.policy = record
            result.policy_changed = not record.same_as(new)
            policies = [record, new] if result.policy_changed else [record]
            result.risk = "critical" if result.policy_changed else _risk(plan)
            if windows:
                self._check_windows(result, policies)
            result.rollback = self._is_rollback(plan)
            self._check_approvals(result, plan, policies)
        except ReconcilerError as e:
            result.reasons.append(f"cannot read approvals, refusing: {e.message}")
        result.passed = not result.reasons
        return result

    def _policy_of_record(self, env: str) -> Policy | None:
        last = self.store.last_applied_run(env)
        if last is not None and last.policy is not None:
            at = f" (commit {last.commit[:12]})" if last.commit else ""
            return Policy.from_document(last.policy, f"run {last.id}{at}")
        before = self._before_the_change()
        return self.history.policy(before, env) if before is not None else None

    def _before_the_change(self) -> str | None:
        """Where the deploy branch stood before the change: the target's first parent
        when it is applied (it is on the deploy branch), else the merge base."""
        commit = self.target.commit
        if commit is None:
            return None
        if self.mode == "preview":
            branch = self.settings.env.get(DEPLOY_BRANCH_VAR)
            for ref in filter(None, (branch, "origin/HEAD", "main", "master")):
                base = self.repo.merge_base(commit, ref)
                if base is not None and base != commit:
                    return base
        return self.repo.first_parent(commit)

    def _check_windows(self, result: GateResult, policies: list[Policy]) -> None:
        for policy in policies:
            spec = policy.spec
            if not spec.windows:
                continue
            wv = schedules.evaluate_windows(windows_of(spec), self.now)
            result.window = wv
            if wv.open:
                continue
            if self.override_window and spec.allow_override:
                result.window_overridden = True
                continue
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
            whose = "" if len(policies) == 1 else f" of {policy.origin}"
            result.reasons.append(f"outside its deploy window{whose}: {wv.reason}{reopen}{hint}")

    def _is_rollback(self, plan: EnvironmentPlan) -> bool:
        """A rollback (recorded as one, and judged by the lighter rollback policy) only
        when the commit exactly reverts earlier ones *and* the recorded state is the
        desired state just before it: the whole plan is the inverse of the reverted
        commits, and nothing rides along."""
        if not self.reverts_exactly or self.commit is None:
            return False
        parent = self.repo.first_parent(self.commit)
        if parent is None:
            return False
        before = self.history.snapshot(parent).loaded
        if before is None or plan.environment not in before.desired.environments:
            return False
        again = make_plan(
            before.desired,
            self.store,
            commit=parent,
            environments=[plan.environment],
            secret_env=self.secret_env,
        )
        return not again.environments[0].changes

    def _check_approvals(
        self, result: GateResult, plan: EnvironmentPlan, policies: list[Policy]
    ) -> None:
        needed = max(
            p.spec.approvals.required_for(result.risk, is_rollback=result.rollback)
            for p in policies
        )
        if self.mode == "working_tree":
            if needed or any(p.spec.protected for p in policies):
                result.reasons.append(
                    "the working tree is applied only to environments that need no "
                    f"approvals and are not protected ({_describe(result)})"
                )
            return
        if needed == 0:
            return
        record = policies[0]
        what = f"needs {needed} approval{'s' if needed != 1 else ''} ({_describe(result)})"
        source = self._source(record.approvals)
        if source is None:
            result.reasons.append(
                f"{what} but the policy of record ({record.origin}) names no approval source"
            )
            return
        commit = self.commit
        if commit is None:
            result.reasons.append(f"{what}, and only a commit can be approved")
            return
        last = self.store.last_applied_run(result.environment)
        base = last.commit if last is not None else None
        if base is not None and base != commit and not self.repo.is_ancestor(base, commit):
            result.reasons.append(
                f"{what}, but {commit[:12]} does not descend from the recorded state "
                f"({base[:12]}): roll back with a revert commit instead"
            )
            return
        relevant = self._relevant(result.environment, base, commit)
        for sha in relevant:
            result.coverage.append(self._cover(sha, source, policies, result.risk, result.rollback))
        last_cover = result.coverage[-1] if result.coverage else None
        if last_cover is not None and last_cover.verdicts:
            result.verdict = last_cover.verdicts[0]
        uncovered = [c for c in result.coverage if not c.covered]
        if not uncovered:
            return
        if len(relevant) == 1 and uncovered[0].verdicts:
            v = uncovered[0].verdicts[-1]
            prefix = "the change alters the policy: " if result.policy_changed else ""
            result.reasons.append(prefix + v.summary())
            return
        names = ", ".join(
            f"{c.commit[:7]} ({'; '.join(c.problems) or 'no approved pull request'})"
            for c in uncovered
        )
        result.reasons.append(
            f"{what}: {len(uncovered)} commit{'s' if len(uncovered) != 1 else ''} since the "
            f"recorded state {'are' if len(uncovered) != 1 else 'is'} not covered by an "
            f"approved pull request into the deploy branch: {names}"
        )

    def _relevant(self, env: str, base: str | None, commit: str) -> list[str]:
        """The commits since the recorded state that change `env` (just the commit
        itself when nothing is recorded, or when no commit changes it: then what changes
        comes from outside git, like a rotated secret, and is judged as that commit's)."""
        if base is None:
            return [commit]
        changing = [
            sha for sha in self.repo.commits_between(base, commit) if self.history.changes(sha, env)
        ]
        return changing or [commit]

    def _cover(
        self,
        sha: str,
        source: ApprovalSource,
        policies: list[Policy],
        risk: Risk,
        rollback: bool,
    ) -> Coverage:
        cover = Coverage(sha)
        candidates = [*([self.hint] if self.hint is not None else []),
                      *source.pull_requests_for_commit(sha)]  # fmt: skip
        for number in dict.fromkeys(candidates):
            facts = self._pull(source, number)
            why = self._unbound(facts, sha, self._deploy_branch(source))
            if why is not None:
                cover.problems.append(f"#{number} {why}")
                continue
            verdicts = [
                evaluate(
                    p.spec.approvals,
                    facts,
                    risk=risk,
                    is_rollback=rollback,
                    is_member=source.membership,
                )
                for p in policies
            ]
            cover.verdicts = verdicts
            if all(v.passed for v in verdicts):
                cover.pull_request = number
                cover.problems.clear()
                return cover
            failing = next(v for v in verdicts if not v.passed)
            cover.problems.append(f"#{number}: {failing.summary()}")
        if not candidates:
            cover.problems.append("no pull request (a direct push)")
        return cover

    def _unbound(self, pr: PullRequestFacts, sha: str, deploy: str) -> str | None:
        """Why pull request `pr` cannot count for commit `sha`, or None when it can."""
        if pr.base_ref != deploy:
            return f"is into {pr.base_ref or 'an unknown branch'}, not the deploy branch {deploy}"
        commits = {c.sha for c in pr.commits} | {pr.head_sha}
        if not pr.merged:
            if self.mode == "preview" and pr.head_sha == self.commit and sha in commits:
                return None  # the pull request under review, judged as if merged now
            return "is not merged"
        result = pr.merge_commit_sha or pr.head_sha
        if not self._applies(result):
            return f"was merged as {result[:12]}, which is not part of what is applied"
        part = (
            sha in commits
            or sha == result
            or sha in self.repo.first_parent_chain(result, len(pr.commits))
        )
        if not part:
            return f"does not contain {sha[:12]}"
        return None

    def _applies(self, result: str) -> bool:
        """Whether a pull request's merge result is part of what is applied: an ancestor
        of (or) the target, or a commit with exactly the target's tree."""
        target = self.commit or ""
        if self.repo.is_ancestor(result, target):
            return True
        try:
            return self.repo.tree(result) == self.repo.tree(target)
        except GitError:  # a commit this clone does not have: not what is applied
            return False

    # -- the forge -------------------------------------------------------------------

    def _source(self, approvals: ApprovalsConfig) -> ApprovalSource | None:
        key = (approvals.source, approvals.repository)
        if key not in self._sources:
            self._sources[key] = self._source_for(approvals)
        return self._sources[key]

    def _pull(self, source: ApprovalSource, number: int) -> PullRequestFacts:
        key = (id(source), number)
        if key not in self._pulls:
            self._pulls[key] = source.pull_request(number)
        return self._pulls[key]

    def _deploy_branch(self, source: ApprovalSource) -> str:
        branch = self.settings.env.get(DEPLOY_BRANCH_VAR)
        if branch:
            return branch
        if id(source) not in self._branches:
            self._branches[id(source)] = source.default_branch()
        return self._branches[id(source)]


def _risk(plan: EnvironmentPlan) -> Risk:
    """The highest of each change's new and recorded risk (lowering a deployment's risk
    in the change under judgement lowers nothing)."""
    risks: list[str] = []
    for ch in plan.changes:
        risks.append(ch.risk)
        if ch.before is not None and "risk" in ch.before:
            risks.append(as_risk(ch.before["risk"]))
    return highest_risk(risks)


def _describe(result: GateResult) -> str:
    assert result.policy is not None
    parts = [f"risk {result.risk}"]
    if result.rollback:
        parts.append("rollback policy")
    if result.policy_changed:
        parts.append(
            "the change alters the policy, so the policy of record and the new one both apply"
        )
    parts.append(f"policy of record: {result.policy.origin}")
    return "; ".join(parts)
