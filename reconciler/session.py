"""One command's worth of work: settings, repo, state and the one-way flow.

load → validate → expand (load.py) → plan (plan.py) → gate (gate.py) → apply (apply.py)
→ record (state). The CLI calls these functions and prints what they return.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.apply import EnvironmentResult, ProgressFn, RunContext, execute_environment
from reconciler.config import Settings
from reconciler.errors import EXIT_BLOCKED, EXIT_ERROR, EXIT_OK, ReconcilerError, StateMovedError
from reconciler.gate import Gate, GateResult
from reconciler.gitrepo import ManifestRepo
from reconciler.load import Loaded, load
from reconciler.log import get_logger, register_secrets
from reconciler.manifests import Desired
from reconciler.plan import EnvironmentPlan, Plan, make_plan
from reconciler.state import open_state
from reconciler.state.base import StateStore

log = get_logger("reconciler")


@contextmanager
def state_store(settings: Settings) -> Iterator[StateStore]:
    store = open_state(settings.state_url, repo_root=settings.repo)
    try:
        yield store
    finally:
        store.close()


def secret_env(
    settings: Settings, desired: Desired, environments: Sequence[str] = ()
) -> dict[str, str]:
    """The secret values plan may fingerprint (and logs must never show)."""
    names: set[str] = set()
    for env, insts in desired.instances.items():
        if environments and env not in environments:
            continue
        for inst in insts.values():
            names.update(inst.secret_names)
    for provs in desired.providers.values():
        for pc in provs.values():
            names.update(pc.credentials.values())
    values = {n: settings.env[n] for n in names if n in settings.env}
    register_secrets(values.values())
    return values


def build_plan(
    settings: Settings,
    store: StateStore,
    *,
    ref: str | None = None,
    environments: Sequence[str] = (),
    allow_delete: bool = False,
) -> tuple[Loaded, Plan]:
    loaded = load(settings, ref)
    plan = make_plan(
        loaded.desired,
        store,
        commit=loaded.commit,
        dirty=loaded.dirty,
        ref=ref,
        environments=environments or None,
        allow_delete=allow_delete,
        secret_env=secret_env(settings, loaded.desired),
    )
    return loaded, plan


def load_plan_file(path: Path) -> Plan:
    try:
        return Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ReconcilerError(f"plan file {path} does not exist") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ReconcilerError(f"plan file {path} is not a reconciler plan: {e}") from None


@dataclass
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

    def summary_markdown(self) -> str:
        """The GitHub Actions job summary of an apply."""
        rows = [
            "### reconciler apply",
            "",
            "| environment | outcome | run | changes |",
            "|---|---|---|---|",
        ]
        for r in self.results:
            c = r.counts()
            rows.append(
                f"| {r.environment} | {r.outcome} | {r.run_id or ''} | "
                f"{c['applied']} applied, {c['failed']} failed |"
            )
        return "\n".join(rows) + "\n"

    @property
    def exit_code(self) -> int:
        if any(r.outcome == "failed" for r in self.results):
            return EXIT_ERROR
        if any(r.outcome == "blocked" for r in self.results):
            return EXIT_BLOCKED
        return EXIT_OK


def approval_source(settings: Settings) -> Any:
    """The configured approval source, or None when approvals.source is `none`."""
    kind = settings.approvals.source
    if kind == "none":
        return None
    from reconciler.approvals import make_source

    env = dict(settings.env)
    if settings.approvals.file and "RECONCILER_APPROVALS_FILE" not in env:
        env["RECONCILER_APPROVALS_FILE"] = str(settings.repo / settings.approvals.file)
    return make_source(kind, repository=settings.approvals.repository, env=env)


def run_apply(
    settings: Settings,
    store: StateStore,
    opts: ApplyOptions,
    *,
    progress: ProgressFn | None = None,
    trigger_context: Callable[[Loaded], RunContext] | None = None,
) -> ApplyReport:
    """Plan (or load the saved plan), gate each environment, apply those that pass."""
    ref = opts.commit
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
            ref=ref,
            environments=opts.environments,
            allow_delete=opts.allow_delete,
        )
    env_secrets = secret_env(settings, loaded.desired)
    context = trigger_context(loaded) if trigger_context else run_context(settings, loaded)
    now = opts.now or datetime.now(UTC)
    gate = Gate(
        approval_source(settings) if _needs_source(loaded, plan) else None,
        commit=loaded.commit,
        pull_request=opts.pull_request,
        is_rollback=context.trigger == "rollback",
        now=now,
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
        ctx = _context_for(context, g, store, ep.environment)
        replan = None
        if opts.plan_file is None:
            replan = _replanner(settings, store, loaded, ep, opts, env_secrets)
        result = execute_environment(
            store,
            ep,
            desired=loaded.desired.instances.get(ep.environment, {}),
            providers=loaded.desired.providers.get(ep.environment, {}),
            repo_root=settings.repo,
            env=settings.env,
            context=ctx,
            parallelism=opts.parallelism or settings.parallelism,
            rollback_on_failure=opts.rollback_on_failure,
            break_lock=opts.break_lock,
            replan=replan,
            progress=progress,
        )
        report.results.append(result)
    return report


def judge_approvals(
    settings: Settings,
    store: StateStore,
    *,
    commit: str | None,
    pull_request: int | None,
    now: datetime | None = None,
) -> tuple[Plan, dict[str, GateResult]]:
    """The approval verdict for each environment the change touches (`approvals`)."""
    loaded, plan = build_plan(settings, store, ref=commit)
    context = run_context(settings, loaded)
    gate = Gate(
        approval_source(settings) if _needs_source(loaded, plan) else None,
        commit=loaded.commit,
        pull_request=pull_request,
        is_rollback=context.trigger == "rollback",
        now=now or datetime.now(UTC),
    )
    verdicts = {
        ep.environment: gate.check_approvals(ep, loaded.desired.policy(ep.environment))
        for ep in plan.environments
        if ep.changes
    }
    return plan, verdicts


def _needs_source(loaded: Loaded, plan: Plan) -> bool:
    for ep in plan.environments:
        if ep.changes and loaded.desired.policy(ep.environment).approvals.required_for(ep.max_risk):
            return True
        if ep.changes and loaded.desired.policy(ep.environment).approvals.rollback is not None:
            return True
    return False


def run_context(settings: Settings, loaded: Loaded) -> RunContext:
    """`rollback` when the commit exactly reverts earlier ones (see is_exact_revert).

    A message that claims a revert but changes anything else is an ordinary change
    for the gate; it is still linked in history, flagged as not exact.
    """
    if loaded.commit is None or loaded.dirty:
        return RunContext(commit=loaded.commit)
    repo = ManifestRepo(settings.repo)
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
        if any(c.refused for c in fresh.changes):
            raise ReconcilerError(fresh.changes[0].refused or "refused")
        return fresh

    return replan


def manifest_repo(settings: Settings) -> ManifestRepo:
    return ManifestRepo(settings.repo)
