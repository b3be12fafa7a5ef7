"""`reconciler apply`: plan (or load a saved plan), gate each environment, apply those
that pass, one run per environment."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from reconciler.checks.runner import after_apply
from reconciler.commands.context import (
    applied_by,
    manifest_repo,
    open_store,
    require_manifests,
)
from reconciler.commands.plan import Built, build_plan, load_plan_file
from reconciler.commands.run import limits, open_execution_store
from reconciler.config import Settings
from reconciler.errors import EXIT_BLOCKED, EXIT_ERROR, EXIT_OK, ReconcilerError, StateMovedError
from reconciler.executor import (
    AfterApplyFn,
    EnvironmentResult,
    HealthFn,
    ProgressFn,
    RunContext,
    execute_environment,
)
from reconciler.forge import make_source
from reconciler.gate import Gate, GateResult
from reconciler.load import Loaded
from reconciler.manifests import full_collections_deferred
from reconciler.plan import EnvironmentPlan, Plan, make_plan
from reconciler.state.base import StateStore
from reconciler.vocabulary import Trigger


@dataclass(frozen=True)
class ApplyOptions:
    environments: Sequence[str] = ()
    plan_file: Path | None = None
    commit: str | None = None
    allow_delete: bool = False
    rollback_on_failure: bool = False
    break_lock: bool = False
    parallelism: int | None = None
    override_window: bool = False
    pull_request: int | None = None
    now: datetime | None = None
    #: `watch --apply`: the working tree, for environments that need no approval only.
    working_tree: bool = False
    #: What a run records as its trigger unless the gate judged it a rollback (`agent`).
    trigger: Trigger = "apply"
    #: Each run's deadline in seconds (`--run-timeout`); None: the settings' own.
    run_timeout: float | None = None
    #: The commit already loaded (the agent's, once per fetched commit): planned without
    #: reading it again when it is the commit applied.
    loaded: Loaded | None = None


@dataclass
class ApplyReport:
    plan: Plan
    gates: dict[str, GateResult] = field(default_factory=dict)
    results: list[EnvironmentResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if any(r.outcome == "failed" for r in self.results):
            return EXIT_ERROR
        if any(r.outcome == "blocked" for r in self.results):
            return EXIT_BLOCKED
        return EXIT_OK


@dataclass(frozen=True)
class Watchers:
    """Who hears of a run as it goes: each finished change, each health change."""

    progress: ProgressFn | None = None
    health: HealthFn | None = None


def apply(
    settings: Settings,
    opts: ApplyOptions,
    *,
    progress: ProgressFn | None = None,
    health: HealthFn | None = None,
) -> ApplyReport:
    require_manifests(settings)  # before the state is opened (and created)
    with open_store(settings) as store:
        return run_apply(settings, store, opts, progress=progress, health=health)


def run_apply(
    settings: Settings,
    store: StateStore,
    opts: ApplyOptions,
    *,
    progress: ProgressFn | None = None,
    health: HealthFn | None = None,
    trigger_context: Callable[[Loaded], RunContext] | None = None,
) -> ApplyReport:
    """Plan (or re-derive the saved plan), gate each environment, apply those that pass.
    A run keeps its plan and results until it ends: no full GC rescans them meanwhile."""
    with full_collections_deferred():
        return _run_apply(settings, store, opts, progress, health, trigger_context)


def _run_apply(
    settings: Settings,
    store: StateStore,
    opts: ApplyOptions,
    progress: ProgressFn | None,
    health: HealthFn | None,
    trigger_context: Callable[[Loaded], RunContext] | None,
) -> ApplyReport:
    if opts.plan_file is not None:
        loaded, plan, env_secrets = _rederive(settings, store, opts.plan_file, opts)
    else:
        loaded, plan, env_secrets = _committed_plan(settings, store, opts)
    context = trigger_context(loaded) if trigger_context else run_context(settings, loaded)
    context.details.setdefault("applied_by", applied_by(settings))
    gate = Gate(
        settings=settings,
        store=store,
        target=loaded,
        source_for=lambda approvals: make_source(replace(settings, approvals=approvals)),
        now=opts.now or datetime.now(UTC),
        mode="working_tree" if opts.working_tree else "apply",
        pull_request=opts.pull_request,
        reverts_exactly=context.trigger == "rollback",
        override_window=opts.override_window,
        secret_env=env_secrets,
    )
    report = ApplyReport(plan)
    try:
        _gate_and_apply(
            settings,
            store,
            opts,
            loaded,
            plan,
            gate,
            context,
            report,
            Watchers(progress, health),
            env_secrets,
        )
    finally:
        gate.close()
    return report


def _gate_and_apply(
    settings: Settings,
    store: StateStore,
    opts: ApplyOptions,
    loaded: Loaded,
    plan: Plan,
    gate: Gate,
    context: RunContext,
    report: ApplyReport,
    watchers: Watchers,
    env_secrets: dict[str, str],
) -> None:
    """Each environment on its own: a blocked one never stops the others."""
    run_timeout, timeout_source = settings.run_timeout, settings.run_timeout_source
    if opts.run_timeout is not None:
        run_timeout, timeout_source = opts.run_timeout, "--run-timeout"
    for ep in plan.environments:
        if not ep.changes:
            report.results.append(EnvironmentResult(ep.environment, "noop", message="no changes"))
            continue
        refused = [c for c in ep.changes if c.refused]
        if refused:
            report.results.append(
                EnvironmentResult(ep.environment, "blocked", message=refused[0].refused)
            )
            continue
        g = gate.check(ep)
        report.gates[ep.environment] = g
        if not g.passed:
            report.results.append(
                EnvironmentResult(ep.environment, "blocked", message="; ".join(g.reasons))
            )
            continue
        replan = None
        if opts.plan_file is None:
            replan = _replanner(settings, store, loaded, ep, opts, env_secrets)
        report.results.append(
            execute_environment(
                store,
                ep,
                desired=loaded.desired.instances.get(ep.environment, {}),
                providers=loaded.desired.providers.get(ep.environment, {}),
                repo_root=settings.repo,
                env=settings.env,
                context=_context_for(context, g, store, ep.environment, opts.trigger),
                parallelism=opts.parallelism or settings.parallelism,
                rollback_on_failure=opts.rollback_on_failure,
                break_lock=opts.break_lock,
                replan=replan,
                progress=watchers.progress,
                health=watchers.health,
                run_timeout=run_timeout,
                run_timeout_source=timeout_source,
                after_apply=_checks_after(settings, store, loaded, ep.environment),
            )
        )


def _checks_after(
    settings: Settings, store: StateStore, loaded: Loaded, env: str
) -> AfterApplyFn | None:
    """The checks of the commit applied, run after each run that changes their target."""
    checks = [e.model for e in loaded.desired.manifests.checks.values()]
    if not any(env in c.spec.environments for c in checks):
        return None
    return after_apply(
        checks,
        store,
        lambda: open_execution_store(settings),
        loaded.desired.providers.get(env, {}),
        limits=limits(settings),
    )


def _committed_plan(settings: Settings, store: StateStore, opts: ApplyOptions) -> Built:
    """The plan of a commit, read as git blobs; never the working tree in a git repo.

    Applying HEAD with uncommitted changes to anything apply reads is refused: the
    edits would not be deployed, and the run must record exactly what it applied.
    Outside git (no commit at all) the working tree is planned and recorded with no
    commit; the gate then refuses anything that needs approvals.
    """
    repo = manifest_repo(settings)
    head = repo.head()
    if head is None or opts.working_tree:
        ref = None
    else:
        ref = repo.resolve(opts.commit) if opts.commit else head
    # The fingerprint key is made now, so the plan under each lock is this one while
    # the state stays at its serial (`_replanner`).
    built = build_plan(
        settings,
        store,
        ref=ref,
        environments=opts.environments,
        allow_delete=opts.allow_delete,
        persist_key=True,
        loaded=opts.loaded if opts.loaded is not None and opts.loaded.commit == ref else None,
    )
    loaded = built.loaded
    if ref is not None and ref == head and (dirty := repo.dirty_paths(loaded.paths_read)):
        raise ReconcilerError(
            f"uncommitted changes in files apply reads: {', '.join(dirty)}",
            details="apply deploys commits, never the working tree: commit (or stash) them "
            "and apply again",
        )
    return built


def _rederive(settings: Settings, store: StateStore, path: Path, opts: ApplyOptions) -> Built:
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
        e for e in saved.environments if e.environment in (opts.environments or [e.environment])
    ]
    for e in envs:
        current = store.serial(e.environment)
        if current != e.serial:
            raise StateMovedError(
                f"state of {e.environment!r} moved since the plan was made (serial {e.serial} → "
                f"{current}): run `reconciler plan` again"
            )
    loaded, fresh, secrets = build_plan(
        settings,
        store,
        ref=saved.commit,
        environments=[e.environment for e in envs],
        allow_delete=opts.allow_delete,
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


def run_context(settings: Settings, loaded: Loaded) -> RunContext:
    """`rollback` when the commit exactly reverts earlier ones (see is_exact_revert).

    A message that claims a revert but changes anything else is an ordinary change
    for the gate; it is still linked in history, flagged as not exact.
    """
    if loaded.commit is None:
        return RunContext(commit=None)
    if loaded.dirty:  # edits on top of a commit (watch --apply): not that commit
        return RunContext(commit=None, details={"working_tree_of": loaded.commit})
    repo = manifest_repo(settings)
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
    settings: Settings,
    store: StateStore,
    loaded: Loaded,
    ep: EnvironmentPlan,
    opts: ApplyOptions,
    secret_env: dict[str, str],
) -> Callable[[], EnvironmentPlan]:
    """Recompute this environment's plan under the lock: state may have moved. When it
    has not (same serial; the plan was made with the stored fingerprint key, from the
    same manifests), the plan stands as it is."""

    def replan() -> EnvironmentPlan:
        if store.serial(ep.environment) == ep.serial:
            return ep
        fresh = make_plan(
            loaded.desired,
            store,
            commit=loaded.commit,
            environments=[ep.environment],
            allow_delete=opts.allow_delete,
            secret_env=secret_env,
            persist_key=True,
        ).environments[0]
        refused = next((c.refused for c in fresh.changes if c.refused), None)
        if refused is not None:
            raise ReconcilerError(refused)
        return fresh

    return replan
