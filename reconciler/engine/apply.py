"""Applying: plan (or re-derive a saved plan), gate each environment, apply those that
pass, one run per environment. The CLI's `apply`, `watch --apply` and the agent all
come here with one `ApplyRequest`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from reconciler.checks.runner import after_apply
from reconciler.engine.context import applied_by, open_gate, require_manifests
from reconciler.engine.plan import Built, build_plan, load_plan_file
from reconciler.engine.rollback import RevertProposal, revert_after_failed_check
from reconciler.engine.run import limits
from reconciler.errors import EXIT_BLOCKED, EXIT_ERROR, EXIT_OK, ReconcilerError, StateMovedError
from reconciler.executor import (
    AfterApplyFn,
    ChangeResult,
    EnvironmentResult,
    HealthFn,
    ProgressFn,
    RunContext,
    RunRequest,
    Verification,
    execute_environment,
)
from reconciler.gate import Gate, GateResult
from reconciler.load import Loaded
from reconciler.manifests import full_collections_deferred
from reconciler.plan import EnvironmentPlan, Plan, make_plan
from reconciler.providers.pool import ProviderPool
from reconciler.session import Session
from reconciler.state.base import StateStore
from reconciler.vocabulary import Trigger


@dataclass(frozen=True)
class Watchers:
    """Who hears of a run as it goes: each finished change, each health change."""

    progress: ProgressFn | None = None
    health: HealthFn | None = None


@dataclass(frozen=True)
class ApplyRequest:
    """One apply, whole (as Terraform's `backendrun.Operation`): what to apply, how,
    who hears of it, and what the runs record. Run deadline and parallelism are the
    session's settings (flag > environment > reconciler.yaml, resolved once)."""

    environments: Sequence[str] = ()
    plan_file: Path | None = None
    commit: str | None = None
    allow_delete: bool = False
    rollback_on_failure: bool = False
    break_lock: bool = False
    override_window: bool = False
    pull_request: int | None = None
    now: datetime | None = None
    #: `watch --apply`: the working tree, for environments that need no approval only.
    working_tree: bool = False
    #: What a run records as its trigger unless the gate judged it a rollback (`agent`).
    trigger: Trigger = "apply"
    #: The commit already loaded (the agent's, once per fetched commit): planned without
    #: reading it again when it is the commit applied.
    loaded: Loaded | None = None
    watchers: Watchers = field(default_factory=Watchers)
    #: The run context of the commit applied (the agent's); else `run_context`.
    trigger_context: Callable[[Loaded], RunContext] | None = None
    #: After a check's `onFail: rollback`: open the revert pull request (apply in CI;
    #: `--no-revert-pr` turns it off). Otherwise the report says what to run.
    revert_pr: bool = False


@dataclass
class ApplyReport:
    plan: Plan
    gates: dict[str, GateResult] = field(default_factory=dict)
    results: list[EnvironmentResult] = field(default_factory=list)
    #: Per environment a check rolled back: the revert that makes git agree.
    reverts: dict[str, RevertProposal] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if any(r.outcome == "failed" for r in self.results):
            return EXIT_ERROR
        if any(r.outcome == "blocked" for r in self.results):
            return EXIT_BLOCKED
        return EXIT_OK


def apply(session: Session, request: ApplyRequest) -> ApplyReport:
    """Apply with a state of its own, opened (and created) once the folder is known to
    be a manifests repo."""
    require_manifests(session)
    with session.open_store() as store:
        return run_apply(session, store, request)


def run_apply(session: Session, store: StateStore, request: ApplyRequest) -> ApplyReport:
    """Plan (or re-derive the saved plan), gate each environment, apply those that pass.
    A run keeps its plan and results until it ends: no full GC rescans them meanwhile."""
    with full_collections_deferred():
        return _run_apply(session, store, request)


def _run_apply(session: Session, store: StateStore, request: ApplyRequest) -> ApplyReport:
    if request.plan_file is not None:
        built = _rederive(session, store, request.plan_file, request)
    else:
        built = _committed_plan(session, store, request)
    loaded = built.loaded
    make_context = request.trigger_context
    context = make_context(loaded) if make_context else run_context(session, loaded)
    context.details.setdefault("applied_by", applied_by(session))
    gate = open_gate(
        session,
        store,
        loaded,
        now=request.now or session.clock.now(),
        mode="working_tree" if request.working_tree else "apply",
        pull_request=request.pull_request,
        reverts_exactly=context.trigger == "rollback",
        override_window=request.override_window,
        secret_env=built.secrets,
    )
    report = ApplyReport(built.plan)
    try:
        for ep in built.plan.environments:
            report.results.append(
                _environment(session, store, request, built, gate, context, ep, report)
            )
    finally:
        gate.close()
    return report


def _environment(
    session: Session,
    store: StateStore,
    request: ApplyRequest,
    built: Built,
    gate: Gate,
    context: RunContext,
    ep: EnvironmentPlan,
    report: ApplyReport,
) -> EnvironmentResult:
    """One environment on its own: a blocked one never stops the others."""
    if not ep.changes:
        return EnvironmentResult(ep.environment, "noop", message="no changes")
    refused = [c for c in ep.changes if c.refused]
    if refused:
        return EnvironmentResult(ep.environment, "blocked", message=refused[0].refused)
    g = gate.check(ep)
    report.gates[ep.environment] = g
    if not g.passed:
        return EnvironmentResult(ep.environment, "blocked", message="; ".join(g.reasons))
    settings = session.settings
    loaded = built.loaded
    replan = None
    if request.plan_file is None:
        replan = _replanner(store, built, ep, request)
    checks = _checks_after(session, store, loaded, ep.environment)
    said: list[Verification] = []
    run = RunRequest(
        desired=loaded.desired.instances.get(ep.environment, {}),
        providers=loaded.desired.providers.get(ep.environment, {}),
        context=_context_for(context, g, store, ep.environment, request.trigger),
        provider_factory=session.provider,
        parallelism=settings.parallelism,
        rollback_on_failure=request.rollback_on_failure,
        break_lock=request.break_lock,
        replan=replan,
        progress=request.watchers.progress,
        health=request.watchers.health,
        run_timeout=settings.run_timeout,
        run_timeout_source=settings.run_timeout_source,
        after_apply=None if checks is None else _heard(checks, said),
    )
    result = execute_environment(store, ep, run)
    failures = [line for v in said for line in v.failures]
    if failures and result.restored and loaded.commit is not None and not loaded.dirty:
        report.reverts[ep.environment] = revert_after_failed_check(
            session,
            store,
            ep.environment,
            result.run_id,
            loaded.commit,
            loaded.paths_read,
            failures,
            open_pr=request.revert_pr,
        )
    return result


def _heard(checks: AfterApplyFn, said: list[Verification]) -> AfterApplyFn:
    """The checks' hook, keeping what they said: a rollback they caused proposes a
    revert with the failures and their measured values."""

    def verify(
        environment: str, run_id: str, results: Sequence[ChangeResult], pool: ProviderPool
    ) -> Verification:
        verification = checks(environment, run_id, results, pool)
        said.append(verification)
        return verification

    return verify


def _checks_after(
    session: Session, store: StateStore, loaded: Loaded, env: str
) -> AfterApplyFn | None:
    """The checks of the commit applied, run after each run that changes their target."""
    checks = [e.model for e in loaded.desired.manifests.checks.values()]
    if not any(env in c.spec.environments for c in checks):
        return None
    return after_apply(
        checks,
        store,
        lambda: session.open_executions(),
        loaded.desired.providers.get(env, {}),
        limits=limits(session),
    )


def _committed_plan(session: Session, store: StateStore, request: ApplyRequest) -> Built:
    """The plan of a commit, read as git blobs; never the working tree in a git repo.

    Applying HEAD with uncommitted changes to anything apply reads is refused: the
    edits would not be deployed, and the run must record exactly what it applied.
    Outside git (no commit at all) the working tree is planned and recorded with no
    commit; the gate then refuses anything that needs approvals.
    """
    repo = session.repo
    head = repo.head()
    if head is None or request.working_tree:
        ref = None
    else:
        ref = repo.resolve(request.commit) if request.commit else head
    # The fingerprint key is made now, so the plan under each lock is this one while
    # the state stays at its serial (`_replanner`).
    given = request.loaded
    built = build_plan(
        session,
        store,
        ref=ref,
        environments=request.environments,
        allow_delete=request.allow_delete,
        persist_key=True,
        loaded=given if given is not None and given.commit == ref else None,
    )
    loaded = built.loaded
    if ref is not None and ref == head and (dirty := repo.dirty_paths(loaded.paths_read)):
        raise ReconcilerError(
            f"uncommitted changes in files apply reads: {', '.join(dirty)}",
            details="apply deploys commits, never the working tree: commit (or stash) them "
            "and apply again",
        )
    return built


def _rederive(session: Session, store: StateStore, path: Path, request: ApplyRequest) -> Built:
    """A saved plan is a claim, not an instruction: recompute it at its commit against
    the state at its serials and refuse any difference (action, key, after, risk,
    refusal). Protection and --allow-delete come from the manifests and the command
    line, never from the file."""
    saved = load_plan_file(path)
    if saved.commit is None or saved.dirty:
        raise ReconcilerError(
            f"plan file {path} names no commit (made from a working tree): only a plan of a "
            "commit can be applied; commit, plan again with --out, and apply that"
        )
    envs = [
        e for e in saved.environments if e.environment in (request.environments or [e.environment])
    ]
    for e in envs:
        current = store.serial(e.environment)
        if current != e.serial:
            raise StateMovedError(
                f"state of {e.environment!r} moved since the plan was made (serial {e.serial} → "
                f"{current}): run `reconciler plan` again"
            )
    loaded, fresh, secrets = build_plan(
        session,
        store,
        ref=saved.commit,
        environments=[e.environment for e in envs],
        allow_delete=request.allow_delete,
    )
    saved.environments = envs
    if (problem := plan_difference(saved, fresh)) is not None:
        raise ReconcilerError(
            f"plan file {path} does not match the plan of {saved.commit[:12]}: {problem}",
            details="a saved plan is re-derived at its commit and applied only when identical; "
            "run `reconciler plan --out` again",
        )
    return Built(loaded, fresh, secrets)


def plan_difference(saved: Plan, fresh: Plan) -> str | None:
    """The first way `saved` differs from `fresh` in what it would do, or None."""
    if [e.environment for e in saved.environments] != [e.environment for e in fresh.environments]:
        return "the environments differ"
    for a, b in zip(saved.environments, fresh.environments, strict=True):
        theirs = {c.key: c for c in a.changes}
        ours = {c.key: c for c in b.changes}
        for key in sorted(theirs.keys() | ours.keys()):
            x, y = theirs.get(key), ours.get(key)
            if x is None or y is None:
                return f"{key.environment}: {key.address} is {'missing' if x is None else 'extra'}"
            for what in ("action", "after", "risk", "refused"):
                if getattr(x, what) != getattr(y, what):
                    return f"{key.environment}: {key.address}: {what} differs"
    return None


def run_context(session: Session, loaded: Loaded) -> RunContext:
    """`rollback` when the commit exactly reverts earlier ones (see is_exact_revert).

    A message that claims a revert but changes anything else is an ordinary change
    for the gate; it is still linked in history, flagged as not exact.
    """
    if loaded.commit is None:
        return RunContext(commit=None)
    if loaded.dirty:  # edits on top of a commit (watch --apply): not that commit
        return RunContext(commit=None, details={"working_tree_of": loaded.commit})
    repo = session.repo
    reverted = repo.reverted_commits(loaded.commit)
    if not reverted:
        return RunContext(commit=loaded.commit)
    if repo.is_exact_revert(loaded.commit, reverted):
        return RunContext(commit=loaded.commit, trigger="rollback", reverted_commits=reverted)
    return RunContext(
        commit=loaded.commit, reverted_commits=reverted, details={"inexact_revert": True}
    )


def _context_for(
    base: RunContext, g: GateResult, store: StateStore, env: str, trigger: Trigger = "apply"
) -> RunContext:
    """The environment's own run context: gate facts and the runs a rollback undoes. A
    revert commit is recorded as a rollback only where the gate judged it one (the whole
    plan undoes the reverted commits)."""
    details = dict(base.details)
    if g.window_overridden:
        details["override_window"] = True
    if g.policy_changed:
        details["policy_changed"] = True
    ctx = RunContext(
        commit=base.commit,
        trigger="rollback" if base.trigger == "rollback" and g.rollback else trigger,
        pull_request=base.pull_request,
        author=base.author,
        approvers=list(base.approvers),
        reverted_commits=list(base.reverted_commits),
        reverted_runs=[
            r.id
            for sha in base.reverted_commits
            for r in store.runs_for_commit(sha)
            if r.environment == env and r.trigger != "rollback"
        ]
        or list(base.reverted_runs),
        details=details,
    )
    if g.verdict is not None:
        ctx.pull_request = g.verdict.pull_request
        ctx.author = g.verdict.author
    ctx.approvers = g.approvers
    ctx.policy = g.new_policy
    return ctx


def _replanner(
    store: StateStore, built: Built, ep: EnvironmentPlan, request: ApplyRequest
) -> Callable[[], EnvironmentPlan]:
    """Recompute this environment's plan under the lock: state may have moved. When it
    has not (same serial; the plan was made with the stored fingerprint key, from the
    same manifests), the plan stands as it is."""

    def replan() -> EnvironmentPlan:
        if store.serial(ep.environment) == ep.serial:
            return ep
        fresh = make_plan(
            built.loaded.desired,
            store,
            commit=built.loaded.commit,
            environments=[ep.environment],
            allow_delete=request.allow_delete,
            secret_env=built.secrets,
            persist_key=True,
        ).environments[0]
        refused = next((c.refused for c in fresh.changes if c.refused), None)
        if refused is not None:
            raise ReconcilerError(refused)
        return fresh

    return replan
