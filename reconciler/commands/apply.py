"""`reconciler apply`: plan (or load a saved plan), gate each environment, apply those
that pass, one run per environment."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from reconciler.apply import EnvironmentResult, ProgressFn, RunContext, execute_environment
from reconciler.commands.context import approval_source, manifest_repo, open_store, secret_env
from reconciler.commands.plan import build_plan, load_plan_file
from reconciler.config import Settings
from reconciler.errors import EXIT_BLOCKED, EXIT_ERROR, EXIT_OK, ReconcilerError, StateMovedError
from reconciler.gate import Gate, GateResult
from reconciler.load import Loaded, load
from reconciler.plan import EnvironmentPlan, Plan, make_plan
from reconciler.state.base import StateStore


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


def apply(
    settings: Settings, opts: ApplyOptions, *, progress: ProgressFn | None = None
) -> ApplyReport:
    with open_store(settings) as store:
        return run_apply(settings, store, opts, progress=progress)


def run_apply(
    settings: Settings,
    store: StateStore,
    opts: ApplyOptions,
    *,
    progress: ProgressFn | None = None,
    trigger_context: Callable[[Loaded], RunContext] | None = None,
) -> ApplyReport:
    """Plan (or load the saved plan), gate each environment, apply those that pass."""
    if opts.plan_file is not None:
        plan = load_plan_file(opts.plan_file)
        if plan.dirty:
            raise ReconcilerError(
                "this plan was made from a working tree with uncommitted changes; "
                "commit them and plan again"
            )
        loaded = load(settings, plan.commit) if plan.commit else load(settings, None)
        if plan.commit and loaded.commit != plan.commit:
            raise StateMovedError(f"plan was made at {plan.commit[:7]}, manifests are elsewhere")
        if opts.environments:
            plan.environments = [e for e in plan.environments if e.environment in opts.environments]
    else:
        loaded, plan = build_plan(
            settings,
            store,
            ref=opts.commit,
            environments=opts.environments,
            allow_delete=opts.allow_delete,
        )
    env_secrets = secret_env(settings, loaded.desired)
    context = trigger_context(loaded) if trigger_context else run_context(settings, loaded)
    gate = Gate(
        approval_source(settings) if needs_source(loaded, plan) else None,
        commit=loaded.commit,
        pull_request=opts.pull_request,
        is_rollback=context.trigger == "rollback",
        now=opts.now or datetime.now(UTC),
        override_window=opts.override_window,
    )
    report = ApplyReport(plan)
    for ep in plan.environments:
        spec = loaded.desired.policy(ep.environment)
        if not ep.changes:
            report.results.append(EnvironmentResult(ep.environment, "noop", message="no changes"))
            continue
        refused = [c for c in ep.changes if c.refused]
        if refused:
            report.results.append(
                EnvironmentResult(ep.environment, "blocked", message=refused[0].refused)
            )
            continue
        g = gate.check(ep, spec)
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
                context=_context_for(context, g, store, ep.environment),
                parallelism=opts.parallelism or settings.parallelism,
                rollback_on_failure=opts.rollback_on_failure,
                break_lock=opts.break_lock,
                replan=replan,
                progress=progress,
            )
        )
    return report


def needs_source(loaded: Loaded, plan: Plan) -> bool:
    """Whether any changed environment's policy could ask the forge at all."""
    for ep in plan.environments:
        if not ep.changes:
            continue
        policy = loaded.desired.policy(ep.environment).approvals
        if policy.required_for(ep.max_risk) or policy.rollback is not None:
            return True
    return False


def run_context(settings: Settings, loaded: Loaded) -> RunContext:
    """`rollback` when the commit exactly reverts earlier ones (see is_exact_revert).

    A message that claims a revert but changes anything else is an ordinary change
    for the gate; it is still linked in history, flagged as not exact.
    """
    if loaded.commit is None or loaded.dirty:
        return RunContext(commit=loaded.commit)
    repo = manifest_repo(settings)
    reverted = repo.reverted_commits(loaded.commit)
    if not reverted:
        return RunContext(commit=loaded.commit)
    if repo.is_exact_revert(loaded.commit, reverted):
        return RunContext(commit=loaded.commit, trigger="rollback", reverted_commits=reverted)
    return RunContext(
        commit=loaded.commit, reverted_commits=reverted, details={"inexact_revert": True}
    )


def _context_for(base: RunContext, g: GateResult, store: StateStore, env: str) -> RunContext:
    """The environment's own run context: gate facts and the runs a rollback undoes."""
    details = dict(base.details)
    if g.window_overridden:
        details["override_window"] = True
    ctx = RunContext(
        commit=base.commit,
        trigger=base.trigger,
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
        ctx.approvers = list(g.verdict.approved_by)
    return ctx


def _replanner(
    settings: Settings,
    store: StateStore,
    loaded: Loaded,
    ep: EnvironmentPlan,
    opts: ApplyOptions,
    secret_env: dict[str, str],
) -> Callable[[], EnvironmentPlan]:
    """Recompute this environment's plan under the lock: state may have moved."""

    def replan() -> EnvironmentPlan:
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
