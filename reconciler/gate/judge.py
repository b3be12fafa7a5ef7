"""The gate's judgement: a pure function of facts (docs/design.md, "The gate").

`judge(facts)` imports nothing from git, state, forges, loading or planning: the facts
builder (`gate/facts.py`) asks each of those once per environment, and everything that
decides the verdict — which policies are in force, which commits are covered by which
pull request, who counted — happens here, over data. Table-driven tests call it directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from reconciler import schedules
from reconciler.approvals.evaluate import Verdict, evaluate
from reconciler.approvals.facts import PullRequestFacts
from reconciler.checks.evidence import eval_digest
from reconciler.config import ApprovalsConfig
from reconciler.manifests.models import EnvironmentSpec, Promotion
from reconciler.policy import Policy
from reconciler.vocabulary import Risk

#: `apply` deploys a commit; `preview` judges a pull request's head before its merge
#: (`reconciler approvals`, the commit status); `working_tree` is `watch --apply`.
Mode = Literal["apply", "preview", "working_tree"]
#: An approval source by what names it: (source, repository).
SourceKey = tuple[str, str | None]


def source_key(approvals: ApprovalsConfig) -> SourceKey:
    return (approvals.source, approvals.repository)


@dataclass(frozen=True)
class Candidate:
    """A pull request that may cover a commit, with what git says about it."""

    number: int
    facts: PullRequestFacts
    #: The forge lists this pull request for the commit (not only a hint: `--pr`, the CI
    #: event's pull request).
    listed: bool = False
    #: Its merge result is part of what is applied: the target, an ancestor of it, or a
    #: commit with exactly its tree.
    result_applied: bool = False
    #: The commit is on the first-parent chain of a single-parent merge result, within as
    #: many commits as the pull request has: where a rebase merge puts its copies.
    on_rebase_chain: bool = False


@dataclass(frozen=True)
class CommitFacts:
    """One commit that changes the environment, and the pull requests that may cover it,
    by approval source."""

    sha: str
    candidates: Mapping[SourceKey, tuple[Candidate, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyStep:
    """A commit of the deploy branch's first-parent history that changed the environment's
    policy (declared it, changed it, or removed it: `after` None)."""

    commit: CommitFacts
    after: Policy | None


@dataclass(frozen=True)
class Claim:
    """Another environment whose policy of record reads a variable this change adds."""

    variable: str
    environment: str
    policy: Policy


@dataclass(frozen=True)
class Evidence:
    """What `source` (a promotion's `from`) holds for one deployment the change alters:
    read from the recorded state and the check executions, never from the change."""

    deployment: str
    source: str
    #: The evidence digest the change would run (`checks.evidence`).
    digest: str
    #: The digest `source` has applied, and since when (None: not applied there).
    applied_digest: str | None = None
    applied_at: datetime | None = None
    #: Passing and failed check executions in `source` on that deployment since it was
    #: applied (passes counted only on the change's exact digest).
    passed: int = 0
    failed: int = 0
    #: The eval runs recorded in `source` on the change's exact digest since it was
    #: applied there (advisory ones left out), oldest first.
    eval_runs: tuple[EvalRun, ...] = ()


@dataclass(frozen=True)
class EvalRun:
    """One recorded run of an Eval, as its executions add up."""

    eval: str
    run: str
    #: The eval's own digest (dataset, repeat, thresholds) it ran with.
    eval_digest: str
    calls: int
    passed: int
    #: The calls it planned: fewer recorded means it stopped (its budget ran out).
    planned: int
    #: With a baseline, what it was compared with (`runs.model.Execution.baseline`).
    baseline: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Facts:
    """Everything the verdict on one environment depends on."""

    environment: str
    mode: Mode
    #: The commit judged (None: a working tree).
    commit: str | None
    #: The policy the change declares.
    new: Policy
    #: The policy recorded with the environment's last applied run.
    recorded: Policy | None
    #: With no recorded policy: the environment's policy changes on the deploy branch's
    #: first-parent history up to the change, oldest first.
    history: tuple[PolicyStep, ...] = ()
    #: The commit of the environment's last applied run.
    base: str | None = None
    #: False when the target does not descend from `base`.
    base_descends: bool = True
    #: The commits whose changes reach the environment (oldest first).
    relevant: tuple[CommitFacts, ...] = ()
    #: The highest of each change's new and recorded risk.
    plan_risk: Risk = "low"
    #: The commit exactly reverts earlier ones and the plan is their inverse.
    rollback: bool = False
    #: When windows are judged (None: approvals only).
    now: datetime | None = None
    override_window: bool = False
    #: The deploy branch, by approval source.
    deploy_branch: Mapping[SourceKey, str] = field(default_factory=dict)
    #: Approval sources that exist (a policy may name `none`).
    sources: frozenset[SourceKey] = frozenset()
    #: Team membership, by source: (org, team, user) → "active" / "pending" / "none".
    membership: Mapping[SourceKey, Mapping[tuple[str, str, str], str]] = field(default_factory=dict)
    claims: tuple[Claim, ...] = ()
    #: Where the operator says approvals come from (RECONCILER_APPROVALS_SOURCE): it
    #: wins over the source any policy names.
    operator_source: SourceKey | None = None
    #: A fact could not be read (a forge or state error): the environment is blocked.
    problem: str | None = None
    #: For each deployment the change alters, what each promotion source holds.
    evidence: tuple[Evidence, ...] = ()
    #: When the evidence is judged (soak), even where windows are not.
    evidence_at: datetime | None = None

    def source_for(self, record: Policy) -> SourceKey:
        return self.operator_source or source_key(record.approvals)


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
    #: The next step for each reason (a command, a setting, a doc section).
    fixes: list[str] = field(default_factory=list)
    #: The verdict on the pull request that brought the target commit (what the run
    #: records as its pull request and approvers).
    verdict: Verdict | None = None
    window: schedules.WindowVerdict | None = None
    #: True when a closed window was overridden (recorded in the run).
    window_overridden: bool = False
    policy: Policy | None = None
    #: Every policy the change is judged by (the policy of record first).
    policies: list[Policy] = field(default_factory=list)
    #: True when the change alters the policy (judged by both, as critical).
    policy_changed: bool = False
    #: The policy this change would leave in force (recorded by its run).
    new_policy: dict[str, Any] | None = None
    risk: Risk = "low"
    rollback: bool = False
    #: Approvals needed (the most any policy asks).
    required: int = 0
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

    def refuse(self, reason: str, fix: str) -> None:
        self.reasons.append(reason)
        self.fixes.append(fix)

    def document(self) -> dict[str, Any]:
        """`approvals --json`: the policy of record and where it came from, the commits
        covered and by which pull request, who counted, who did not and why."""
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "refusals": [
                {"reason": r, "fix": f} for r, f in zip(self.reasons, self.fixes, strict=True)
            ],
            "required": self.required,
            "verdict": self.verdict.as_dict() if self.verdict else None,
            "risk": self.risk,
            "rollback": self.rollback,
            "policy": None
            if self.policy is None
            else {
                "origin": self.policy.origin,
                "changed": self.policy_changed,
                "document": self.policy.document,
                "alsoJudgedBy": [p.origin for p in self.policies[1:]],
            },
            "coverage": [c.document() for c in self.coverage],
        }


# -- the verdict -----------------------------------------------------------------------

FIX_APPROVALS = "get the pull request approved (`reconciler approvals --env {env}` says by whom)"
FIX_DIRECT = (
    "land the change through a pull request into the deploy branch, approved under the "
    'policy of record (docs/design.md, "Change-set coverage")'
)


def judge(facts: Facts) -> GateResult:
    """May this environment's change be applied? Every reason it may not, with a fix."""
    result = GateResult(facts.environment, passed=False, new_policy=facts.new.document)
    if facts.problem is not None:
        result.refuse(
            f"cannot read approvals, refusing: {facts.problem}",
            "fix the forge or state access named here, then run the command again",
        )
        return result
    in_force = policies_in_force(facts)
    record = in_force[0] if in_force else _alone(facts.new)
    result.policy = record
    result.policy_changed = any(not p.same_as(facts.new) for p in in_force)
    policies = [*in_force] if in_force else [record]
    if result.policy_changed:
        policies.append(facts.new)
    claimed = [c.policy for c in facts.claims]
    result.policies = [*policies, *claimed]
    result.risk = "critical" if result.policy_changed else facts.plan_risk
    if facts.now is not None:
        _check_windows(result, policies, facts)
    result.rollback = facts.rollback
    _check_promotion(result, policies, facts)
    _check_approvals(result, facts, record)
    result.passed = not result.reasons
    return result


@dataclass(frozen=True)
class Needs:
    """What the gate will ask of an environment's change, said before it is asked (in
    `plan`): approvals under which policy, and whether a deploy window is closed. Read
    from the policy of record alone (no forge): who approved is apply's question."""

    required: int
    risk: Risk
    policy: str
    policy_changed: bool = False
    window: str | None = None
    #: Why a deployment is not yet eligible under a promotion policy (None: no policy).
    promotion: list[str] | None = None

    def line(self) -> str:
        if self.required:
            what = f"needs {self.required} approval{'s' if self.required != 1 else ''}"
        else:
            what = "needs no approvals"
        why = f"risk {self.risk}" + (", the policy changes" if self.policy_changed else "")
        text = f"gate: {what} ({why}; {self.policy})"
        text += f"; {self.window}" if self.window else ""
        if self.promotion is not None:
            text += "; " + ("; ".join(self.promotion) or "promotion: every deployment eligible")
        return text

    def document(self) -> dict[str, Any]:
        return {
            "summary": self.line(),
            "required": self.required,
            "risk": self.risk,
            "policy": self.policy,
            "policy_changed": self.policy_changed,
            "window": self.window,
            **({} if self.promotion is None else {"promotion": list(self.promotion)}),
        }


def needs(
    env: str,
    new: Policy,
    recorded: Policy | None,
    plan_risk: Risk,
    now: datetime,
    evidence: tuple[Evidence, ...] = (),
) -> Needs:
    """`plan`'s forecast of the gate for one environment (see `Needs`). With nothing
    recorded it reads the declared policy, and says so: the gate may hold earlier
    policies of the deploy branch's history in force too."""
    facts = Facts(
        env, "apply", None, new, recorded, plan_risk=plan_risk, now=now, evidence=evidence
    )
    result = GateResult(env, passed=False)
    record = recorded or _alone(new)
    result.policy_changed = recorded is not None and not recorded.same_as(new)
    policies = [record, new] if result.policy_changed else [record]
    result.risk = "critical" if result.policy_changed else plan_risk
    _check_windows(result, policies, facts)
    promotion = None
    if any(p.spec.promotion is not None for p in policies):
        held = GateResult(env, passed=False)
        _check_promotion(held, policies, facts)
        promotion = held.reasons
    required = max(p.spec.approvals.required_for(result.risk) for p in policies)
    origin = (
        f"policy of record: {record.origin}"
        if recorded is not None
        else "nothing recorded: the declared policy, and any earlier one history keeps in force"
    )
    return Needs(
        required,
        result.risk,
        origin,
        result.policy_changed,
        "; ".join(result.reasons) or None,
        promotion,
    )


def _alone(new: Policy) -> Policy:
    return replace(new, origin="the change itself (the environment is new)")


def policies_in_force(facts: Facts) -> list[Policy]:
    """The policy of record, or with none recorded, every policy the environment has had
    on the deploy branch that no reviewed change replaced (the newest trusted first).

    History is replayed: the environment's first declaration is in force as declared; a
    later change replaces the policies in force only when a pull request covers it,
    approved under each of them and the new one (at critical risk); an unreviewed change
    adds its policy to those in force and lifts nothing. So two direct pushes (the first
    lowering `required`) leave the first push's predecessor in force."""
    if facts.recorded is not None:
        return [facts.recorded]
    in_force: list[Policy] = []
    for step in facts.history:
        after = step.after
        if not in_force:
            if after is not None:
                in_force = [after]
            continue
        if after is not None and all(p.same_as(after) for p in in_force):
            continue
        judged_by = [*in_force, *([after] if after is not None else [])]
        needed = max(p.spec.approvals.required_for("critical") for p in judged_by)
        if (
            needed == 0
            or _cover(step.commit, judged_by, "critical", False, facts, in_force[0]).covered
        ):
            in_force = [after] if after is not None else []
        elif after is not None and not any(p.same_as(after) for p in in_force):
            in_force.append(after)
    # The newest trusted policy names the approval source: it leads.
    return in_force


def _check_windows(result: GateResult, policies: list[Policy], facts: Facts) -> None:
    assert facts.now is not None
    for policy in policies:
        spec = policy.spec
        if not spec.windows:
            continue
        wv = schedules.evaluate_windows(windows_of(spec), facts.now)
        result.window = wv
        if wv.open:
            continue
        if facts.override_window and spec.allow_override:
            result.window_overridden = True
            continue
        zone = wv.window.timezone if wv.window else "UTC"
        reopen = (
            f"; it opens at {schedules.format_both(wv.next_open, zone)}"
            if wv.next_open is not None
            else ""
        )
        whose = "" if len(policies) == 1 else f" of {policy.origin}"
        hint = (
            " (use --override-window in an emergency: it is recorded)"
            if spec.allow_override
            else " (this environment does not allow --override-window)"
            if facts.override_window
            else ""
        )
        fix = (
            "wait for the window, or in an emergency apply with --override-window (recorded)"
            if spec.allow_override
            else "wait for the window (this environment does not allow --override-window)"
        )
        result.refuse(f"outside its deploy window{whose}: {wv.reason}{reopen}{hint}", fix)


FIX_PROMOTE = (
    "apply the same change to {source} first, let its checks pass and soak there, then "
    "promote it (`reconciler promote --from {source} --to {env}`)"
)


def _check_promotion(result: GateResult, policies: list[Policy], facts: Facts) -> None:
    """Each policy's promotion block (of record, and the new one when it changes): every
    deployment the change alters runs in `from` with the exact digest, verified by a
    passing check there when required, and soaked with no failed check since."""
    by_key = {(e.source, e.deployment): e for e in facts.evidence}
    changed = dict.fromkeys(e.deployment for e in facts.evidence)
    for policy in policies:
        promo = policy.spec.promotion
        if promo is None:
            continue
        for name in changed:
            ev = by_key.get((promo.source, name))
            why = not_eligible(ev, promo, policy.evals, facts.evidence_at or facts.now)
            if why is not None:
                whose = "" if len(policies) == 1 else f" (policy of {policy.origin})"
                fix = FIX_PROMOTE.format(source=promo.source, env=facts.environment)
                if "eval " in why:
                    fix += (
                        f"; run each required eval there on the deploy branch (`reconciler "
                        f"eval NAME --env {promo.source}`), as the policy of record defines it"
                    )
                result.refuse(f"promotion from {promo.source}{whose}: deployment.{name} {why}", fix)


def not_eligible(
    ev: Evidence | None,
    promo: Promotion,
    evals: Mapping[str, Mapping[str, Any]],
    now: datetime | None,
) -> str | None:
    """Why `ev` does not let its deployment into the next environment under `promo`
    (with the required Evals as `evals`, the policy's record of them), or None."""
    source, checks = promo.source, promo.requires.checks
    soak = schedules.parse_duration(promo.soak) if promo.soak else None
    if ev is None or ev.applied_digest is None or ev.applied_at is None:
        return f"is not applied in {source}"
    short = ev.digest.removeprefix("sha256:")[:12]
    if ev.applied_digest != ev.digest:
        return (
            f"would run {short}, but {source} runs "
            f"{ev.applied_digest.removeprefix('sha256:')[:12]} (prompt, model, options or "
            "provider kind differ)"
        )
    if ev.failed:
        return f"failed {ev.failed} check request(s) in {source} since it was applied there"
    if checks and not ev.passed:
        return f"({short}) has no passing check in {source}"
    for name in promo.requires.evals:
        of_record = evals.get(name)
        if of_record is not None and of_record.get("deployment") != ev.deployment:
            continue  # an eval is evidence for its own deployment only
        why = _eval_not_passed(ev, name, of_record)
        if why is not None:
            return f"({short}) {why} in {source}"
    if soak is not None:
        if now is None:
            return "needs a clock to judge its soak"
        due = ev.applied_at + soak
        if now < due:
            return (
                f"is soaking in {source}: applied {_ago(now - ev.applied_at)} ago, needs "
                f"{_ago(soak)} (eligible at {due.isoformat(timespec='seconds')})"
            )
    return None


def _eval_not_passed(ev: Evidence, name: str, of_record: Mapping[str, Any] | None) -> str | None:
    """Whether the latest run of eval `name` on the digest, with the eval of record (its
    dataset, repeat and thresholds: a run of a changed eval is no evidence for it),
    passed by the thresholds of record. The latest run decides: a failing run after a
    pass revokes it."""
    if of_record is None:
        return f"needs eval {name!r}, which is not declared"
    digest = eval_digest(of_record)
    runs = [r for r in ev.eval_runs if r.eval == name and r.eval_digest == digest]
    if not runs:
        return f"has no run of eval {name!r} (as of record, {digest.removeprefix('sha256:')[:12]})"
    last = runs[-1]
    if last.calls < last.planned:
        return (
            f"stopped its latest run of eval {name!r} after {last.calls} of {last.planned} call(s)"
        )
    samples, bar = int(of_record["minSamples"]), float(of_record["minPassRate"])
    if last.calls < samples:
        return f"is inconclusive on eval {name!r}: {last.calls} sample(s), fewer than {samples}"
    rate = last.passed / last.calls if last.calls else 0.0
    if rate < bar:
        return f"failed its latest run of eval {name!r}: pass rate {rate:.3f} < {bar}"
    return baseline_problem(of_record.get("baseline"), last.baseline, rate, name)


def baseline_problem(
    wanted: Mapping[str, Any] | None, had: Mapping[str, Any] | None, rate: float, name: str
) -> str | None:
    """Why a run's pass rate does not hold against its baseline (the latest run of the
    same eval on what the baseline environment ran), or None. Nothing applied there, or
    the same digest applied there, is nothing to fall behind; a baseline never measured
    is no comparison (inconclusive)."""
    if wanted is None:
        return None
    env, drop = wanted.get("environment"), float(wanted.get("maxDrop") or 0.0)
    if had is None:
        return f"ran eval {name!r} without its baseline ({env})"
    if had.get("digest") is None or had.get("same"):
        return None  # nothing applied there, or it runs the very digest measured
    base = had.get("rate")
    short = str(had["digest"]).removeprefix("sha256:")[:12]
    if base is None:
        return (
            f"is inconclusive on eval {name!r}: no run of it on what {env} runs ({short}) "
            "to compare with"
        )
    if rate < float(base) - drop:
        return (
            f"fell behind {env} on eval {name!r}: pass rate {rate:.3f} < {float(base):.3f} "
            f"({short}) - maxDrop {drop}"
        )
    return None


def _ago(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def windows_of(spec: EnvironmentSpec) -> list[schedules.Window]:
    out = []
    for w in spec.windows:
        duration = schedules.parse_duration(w.duration)
        if w.allow is not None:
            out.append(schedules.Window("allow", w.allow, duration, w.timezone))
        elif w.deny is not None:
            out.append(schedules.Window("deny", w.deny, duration, w.timezone))
    return out


def _check_approvals(result: GateResult, facts: Facts, record: Policy) -> None:
    env = facts.environment
    policies = result.policies
    needed = max(
        p.spec.approvals.required_for(result.risk, is_rollback=result.rollback) for p in policies
    )
    result.required = needed
    if facts.mode == "working_tree":
        if needed or any(p.spec.protected for p in policies):
            result.refuse(
                "the working tree is applied only to environments that need no approvals "
                f"and are not protected ({_describe(result)})",
                f"commit the change and apply the commit: `reconciler apply --env {env}`",
            )
        return
    if needed == 0:
        return
    what = f"needs {needed} approval{'s' if needed != 1 else ''} ({_describe(result)})"
    if facts.source_for(record) not in facts.sources:
        fix = (
            "a new environment is judged by what it declares: set approvals.source in "
            "reconciler.yaml (github, gitlab or file) in this change"
            if facts.recorded is None and not facts.history
            else "the source is part of the policy, so no change can bring its own: the "
            "operator sets RECONCILER_APPROVALS_SOURCE (and RECONCILER_APPROVALS_REPOSITORY) "
            'where reconciler runs (README, "Approvals")'
        )
        result.refuse(
            f"{what}, but the policy of record ({record.origin}) names no approval source", fix
        )
        return
    if facts.commit is None:
        result.refuse(f"{what}, and only a commit can be approved", "commit the change")
        return
    if facts.base is not None and not facts.base_descends:
        result.refuse(
            f"{what}, but {facts.commit[:12]} does not descend from the recorded state "
            f"({facts.base[:12]})",
            "roll back with a revert commit instead (`reconciler rollback`)",
        )
        return
    for commit in facts.relevant:
        result.coverage.append(
            _cover(commit, policies, result.risk, result.rollback, facts, record)
        )
    last = result.coverage[-1] if result.coverage else None
    if last is not None and last.verdicts:
        result.verdict = last.verdicts[0]
    uncovered = [c for c in result.coverage if not c.covered]
    if not uncovered:
        return
    if len(facts.relevant) == 1 and uncovered[0].verdicts:
        v = next((v for v in uncovered[0].verdicts if not v.passed), uncovered[0].verdicts[-1])
        prefix = "the change alters the policy: " if result.policy_changed else ""
        result.refuse(prefix + v.summary(), FIX_APPROVALS.format(env=env))
        return
    names = ", ".join(
        f"{c.commit[:7]} ({'; '.join(c.problems) or 'no approved pull request'})" for c in uncovered
    )
    since = "since the recorded state" if facts.base is not None else "in the environment's history"
    n = len(uncovered)
    result.refuse(
        f"{what}: {n} commit{'s' if n != 1 else ''} {since} "
        f"{'are' if n != 1 else 'is'} not covered by an approved pull request into the "
        f"deploy branch: {names}",
        FIX_DIRECT,
    )


def _cover(
    commit: CommitFacts,
    policies: list[Policy],
    risk: Risk,
    rollback: bool,
    facts: Facts,
    record: Policy,
) -> Coverage:
    """Which pull request (from the policy of record's source) covers `commit`: merged
    into the deploy branch, its merge result applied, the commit its own, and approved
    under every policy."""
    cover = Coverage(commit.sha)
    key = facts.source_for(record)
    candidates = commit.candidates.get(key, ())
    members = facts.membership.get(key, {})

    def is_member(org: str, team: str, user: str) -> str:
        return members.get((org, team, user), "none")

    deploy = facts.deploy_branch.get(key, "")
    for cand in candidates:
        why = _unbound(cand, commit.sha, deploy, facts)
        if why is not None:
            cover.problems.append(f"#{cand.number} {why}")
            continue
        verdicts = [
            evaluate(
                p.spec.approvals,
                cand.facts,
                risk=risk,
                is_rollback=rollback,
                is_member=is_member,
            )
            for p in policies
        ]
        cover.verdicts = verdicts
        if all(v.passed for v in verdicts):
            cover.pull_request = cand.number
            cover.problems.clear()
            return cover
        failing = next(v for v in verdicts if not v.passed)
        cover.problems.append(f"#{cand.number}: {failing.summary()}")
    if not candidates:
        cover.problems.append("no pull request: a direct push")
    return cover


def _unbound(cand: Candidate, sha: str, deploy: str, facts: Facts) -> str | None:
    """Why pull request `cand` cannot count for commit `sha`, or None when it can. It
    counts only for its merge result and its own commits (never the commits below its
    merge); a rebase merge's copies of its commits only where the forge itself lists the
    pull request for them."""
    pr = cand.facts
    if pr.base_ref != deploy:
        return f"is into {pr.base_ref or 'an unknown branch'}, not the deploy branch {deploy}"
    own = {c.sha for c in pr.commits} | {pr.head_sha}
    if not pr.merged:
        if facts.mode == "preview" and pr.head_sha == facts.commit and sha in own:
            return None  # the pull request under review, judged as if merged now
        return "is not merged"
    result = pr.merge_commit_sha or pr.head_sha
    if not cand.result_applied:
        return f"was merged as {result[:12]}, which is not part of what is applied"
    if sha == result or sha in own or (cand.listed and cand.on_rebase_chain):
        return None
    return f"does not contain {sha[:12]}"


def _describe(result: GateResult) -> str:
    assert result.policy is not None
    parts = [f"risk {result.risk}"]
    if result.rollback:
        parts.append("rollback policy")
    if result.policy_changed:
        parts.append(
            "the change alters the policy, so the policy of record and the new one both apply"
        )
    claims = [p.origin for p in result.policies if p.origin.startswith("environment ")]
    if claims:
        parts.append("it reads variables another environment's policy holds: " + ", ".join(claims))
    parts.append(f"policy of record: {result.policy.origin}")
    return "; ".join(parts)
