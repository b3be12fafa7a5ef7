"""`reconciler overview`: per environment what ran last, what is pending, drifted,
unhealthy or blocked and when its deploy window opens; and the promotion matrix
(deployments × environments: model, prompt@version, health, pending change).

The deploy window is the one the gate judges by: the policy of record's (recorded with
the environment's last applied run), never the branch head's alone. A head that changes
the windows is judged by both (as the gate does), so its closed window blocks too.

The environments' chain is their declaration order: a cell is highlighted when it
differs from the one in the environment declared before it ("in staging, not yet in
production"). In an environment with `spec.promotion` each cell says whether what the
source runs may be promoted into it, and why not: the gate's own rule over the same
evidence (`engine.promote.judge_promotion`). The dashboard serves this same report from
its background refresh.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler import schedules
from reconciler.engine.approvals import judge
from reconciler.engine.history import HistoryRow
from reconciler.engine.live import LiveReport, ProvidersOfRecord, read_live
from reconciler.engine.plan import build_plan
from reconciler.engine.promote import applied_digest, judge_promotion, promotion_policy
from reconciler.engine.show import commit_subject
from reconciler.errors import ReconcilerError
from reconciler.gate import windows_of
from reconciler.gitrepo import ManifestRepo
from reconciler.instances import InstanceKey
from reconciler.manifests import Desired
from reconciler.manifests.models import EnvironmentSpec, Promotion
from reconciler.plan import Change, Plan
from reconciler.policy import Policy
from reconciler.runs.store import ExecutionStore
from reconciler.session import Session
from reconciler.state.base import AppliedRecord, StateStore
from reconciler.vocabulary import ACTIONS

FORMAT_VERSION = 1
#: Names the branch whose head is deployed (else the repo's current branch).
DEPLOY_BRANCH_VAR = "RECONCILER_DEPLOY_BRANCH"

#: Why each environment with pending changes may not be applied now (empty: it may).
#: Swappable: the gate's own preview replaces `approval_verdicts` when it exists.
Verdicts = Callable[[Plan], Mapping[str, Sequence[str]]]


def deploy_ref(session: Session, ref: str | None = None) -> str | None:
    """`ref`, else RECONCILER_DEPLOY_BRANCH, else the current branch (None: the working
    tree of a directory that is not a git repo, or a detached HEAD's commit)."""
    if ref:
        return ref
    if branch := session.settings.env.get(DEPLOY_BRANCH_VAR):
        return branch
    repo = session.repo
    if repo.head() is None:
        return None
    try:
        return str(repo.repo.active_branch.name)
    except TypeError:  # detached HEAD
        return repo.head()


def approval_verdicts(session: Session) -> Verdicts:
    """The approvals verdict (`reconciler approvals`) of each changed environment."""

    def verdicts(plan: Plan) -> dict[str, list[str]]:
        report = judge(session, commit=plan.commit, pull_request=None)
        return {env: list(g.reasons) for env, g in report.verdicts.items() if not g.passed}

    return verdicts


#: Whose windows an environment with no recorded policy is shown with.
HEAD_POLICY = "the deploy branch head (no policy recorded yet)"


@dataclass(frozen=True)
class WindowStatus:
    open: bool
    reason: str
    next_open: datetime | None
    timezone: str
    #: Whose windows these are: "run <id> (commit <sha>)", the policy of record, or
    #: HEAD_POLICY when no applied run recorded one.
    policy: str = HEAD_POLICY

    def document(self) -> dict[str, Any]:
        nxt = self.next_open
        return {
            "open": self.open,
            "reason": self.reason,
            "next_open": nxt.isoformat() if nxt else None,
            "next_open_local": schedules.format_both(nxt, self.timezone) if nxt else None,
            "policy": self.policy,
        }

    @property
    def blocked_reason(self) -> str:
        reopen = self.document()["next_open_local"]
        return f"outside its deploy window: {self.reason}" + (
            f"; it opens at {reopen}" if reopen else ""
        )


@dataclass(frozen=True)
class LiveCounts:
    in_sync: int
    drifted: int
    missing: int
    unreadable: int
    health: dict[str, int]

    @property
    def degraded(self) -> int:
        return self.health.get("Degraded", 0)

    def document(self) -> dict[str, Any]:
        return {
            "in_sync": self.in_sync,
            "drifted": self.drifted,
            "missing": self.missing,
            "unreadable": self.unreadable,
            "degraded": self.degraded,
            "health": dict(sorted(self.health.items())),
        }


@dataclass
class EnvironmentOverview:
    name: str
    description: str | None
    declared: bool
    protected: bool
    approvals_required: int
    allow_override: bool
    #: The environment before this one in the chain (declaration order).
    previous: str | None
    instances: int
    last_run: HistoryRow | None
    pending: dict[str, int]
    live: LiveCounts | None
    blocked: list[str]
    #: The window of the policy of record (see the module docstring).
    window: WindowStatus | None
    #: The branch head's window when its windows differ from the policy of record's
    #: (the gate judges a policy change by both); None when they are the same.
    head_window: WindowStatus | None = None

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "declared": self.declared,
            "protected": self.protected,
            "approvals_required": self.approvals_required,
            "allow_override": self.allow_override,
            "previous": self.previous,
            "instances": self.instances,
            "last_run": self.last_run.document() if self.last_run else None,
            "pending": self.pending,
            "live": self.live.document() if self.live else None,
            "blocked": self.blocked,
            "window": self.window.document() if self.window else None,
            "head_window": self.head_window.document() if self.head_window else None,
        }


@dataclass(frozen=True)
class Eligibility:
    """May what `source` runs be promoted into this cell's environment, and if not, why
    (the gate's reason). `current`: the environment runs that very digest already."""

    source: str
    digest: str | None
    eligible: bool
    reason: str | None
    current: bool = False

    def document(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "digest": self.digest,
            "eligible": self.eligible,
            "reason": self.reason,
            "current": self.current,
        }


@dataclass(frozen=True)
class Cell:
    """One deployment in one environment: what is recorded as running, how it is doing,
    and what the plan would change."""

    deployed: bool
    provider: str | None = None
    model: str | None = None
    prompt: str | None = None
    commit: str | None = None
    run_id: str | None = None
    applied_at: datetime | None = None
    health: str | None = None
    health_message: str | None = None
    drift: str | None = None
    pending: str | None = None
    pending_model: str | None = None
    pending_prompt: str | None = None
    #: Model or prompt differs from the previous environment's (or it is missing here).
    differs: bool = False
    #: With `spec.promotion` in this environment (and executions to judge by).
    promotion: Eligibility | None = None

    @property
    def shown(self) -> tuple[str | None, str | None]:
        return self.model, self.prompt

    def document(self) -> dict[str, Any]:
        return {
            "deployed": self.deployed,
            "provider": self.provider,
            "model": self.model,
            "prompt": self.prompt,
            "commit": self.commit,
            "run_id": self.run_id,
            "applied_at": self.applied_at.isoformat() if self.applied_at else None,
            "health": self.health,
            "health_message": self.health_message,
            "drift": self.drift,
            "pending": self.pending,
            "pending_model": self.pending_model,
            "pending_prompt": self.pending_prompt,
            "differs": self.differs,
            "promotion": self.promotion.document() if self.promotion else None,
        }


@dataclass
class MatrixRow:
    name: str
    cells: dict[str, Cell | None]

    @property
    def differs(self) -> bool:
        return any(c is not None and (c.differs or c.pending) for c in self.cells.values())


@dataclass
class OverviewReport:
    ref: str | None
    commit: str | None
    generated_at: datetime
    live_as_of: datetime | None
    verdicts_as_of: datetime | None
    environments: list[EnvironmentOverview] = field(default_factory=list)
    rows: list[MatrixRow] = field(default_factory=list)

    @property
    def chain(self) -> list[str]:
        return [e.name for e in self.environments]


def overview(
    session: Session,
    *,
    ref: str | None = None,
    environments: Sequence[str] = (),
    live: bool = True,
    verdicts: Verdicts | None = None,
) -> OverviewReport:
    """The CLI's overview: plan at the deploy branch head, live reads, verdicts."""
    ref = deploy_ref(session, ref)
    judge = verdicts or approval_verdicts(session)
    with session.open_store(read_only=True) as store:
        loaded, plan, _ = build_plan(session, store, ref=ref)
        state = (
            read_live(
                session,
                store,
                ProvidersOfRecord(session).get(store, loaded, uncommitted=True),
            )
            if live
            else None
        )
        blocked = judge_safely(judge, plan)
        executions = session.open_executions(read_only=True)
        try:
            return collect_overview(
                loaded.desired,
                plan,
                store,
                session.repo,
                live=state,
                verdicts=blocked,
                verdicts_at=datetime.now(UTC),
                environments=environments,
                executions=executions,
            )
        finally:
            executions.close()


def judge_safely(judge: Verdicts, plan: Plan) -> dict[str, list[str]]:
    """Verdicts, failing closed: when they cannot be had, every changed environment is
    blocked with the reason."""
    try:
        return {env: list(reasons) for env, reasons in judge(plan).items()}
    except ReconcilerError as e:
        why = f"cannot judge approvals, refusing: {e.message}"
        return {ep.environment: [why] for ep in plan.environments if ep.changes}


def collect_overview(
    desired: Desired,
    plan: Plan,
    store: StateStore,
    repo: ManifestRepo | None,
    *,
    live: LiveReport | None = None,
    verdicts: Mapping[str, Sequence[str]] | None = None,
    verdicts_at: datetime | None = None,
    environments: Sequence[str] = (),
    now: datetime | None = None,
    applied: Mapping[str, Mapping[InstanceKey, AppliedRecord]] | None = None,
    executions: ExecutionStore | None = None,
) -> OverviewReport:
    """Assemble the report; `applied` (per environment) saves reading the state again;
    with `executions`, the matrix judges promotion eligibility."""
    now = now or datetime.now(UTC)
    chain = list(desired.environments)
    chain += [e for e in store.environments() if e not in chain]
    if environments:
        chain = [e for e in chain if e in environments]
    recorded = {
        env: dict(applied[env]) if applied is not None and env in applied else store.applied(env)
        for env in chain
    }
    changes = {(c.key.environment, c.key.name): c for ep in plan.environments for c in ep.changes}
    report = OverviewReport(
        ref=plan.ref,
        commit=plan.commit,
        generated_at=now,
        live_as_of=live.at if live else None,
        verdicts_as_of=verdicts_at if verdicts is not None else None,
    )
    for i, env in enumerate(chain):
        report.environments.append(
            _environment(env, chain[i - 1] if i else None, desired, plan, store, repo, now)
        )
        e = report.environments[-1]
        e.instances = len(recorded[env])
        e.live = _counts(live, env) if live else None
        e.blocked = _blocked(e, plan, verdicts or {})
    report.rows = _matrix(chain, desired, recorded, changes, live)
    if executions is not None:
        _judge_promotions(report.rows, chain, desired, store, executions, recorded, now)
    return report


def _judge_promotions(
    rows: list[MatrixRow],
    chain: Sequence[str],
    desired: Desired,
    store: StateStore,
    executions: ExecutionStore,
    recorded: Mapping[str, Mapping[InstanceKey, AppliedRecord]],
    now: datetime,
) -> None:
    """Each cell of an environment with a promotion block, judged as `promote` judges:
    by the policy of record, what the source has applied and the evidence it holds."""
    for env in chain:
        promo, evals, _ = promotion_policy(store, desired, env)
        if promo is None:
            continue
        source = promo.source
        for row in rows:
            cell = row.cells.get(env)
            if cell is None:
                continue
            judged = _eligibility(
                row.name, env, source, desired, store, executions, recorded, (promo, evals), now
            )
            row.cells[env] = Cell(**{**cell.__dict__, "promotion": judged})


def _eligibility(
    name: str,
    env: str,
    source: str,
    desired: Desired,
    store: StateStore,
    executions: ExecutionStore,
    recorded: Mapping[str, Mapping[InstanceKey, AppliedRecord]],
    policy: tuple[Promotion, Mapping[str, Any]],
    now: datetime,
) -> Eligibility:
    at_source = InstanceKey(source, "Deployment", name)
    if source in recorded:
        record = recorded[source].get(at_source)
    else:  # the source is filtered out of the report: read it
        record = store.applied(source, [at_source]).get(at_source)
    if record is None:
        return Eligibility(source, None, False, f"is not applied in {source}")
    key = InstanceKey(env, "Deployment", name)
    inst = desired.instances.get(env, {}).get(key)
    mine = recorded.get(env, {}).get(key)
    provider = inst.provider if inst is not None else mine.provider if mine else record.provider
    digest, _, why = judge_promotion(desired, store, executions, record, env, provider, policy, now)
    current = mine is not None and digest == applied_digest(desired, mine)
    return Eligibility(source, digest, why is None, why, current)


def _environment(
    env: str,
    previous: str | None,
    desired: Desired,
    plan: Plan,
    store: StateStore,
    repo: ManifestRepo | None,
    now: datetime,
) -> EnvironmentOverview:
    declared = env in desired.environments
    spec = desired.policy(env) if declared else None
    runs = store.runs(env, limit=1)
    ep = next((p for p in plan.environments if p.environment == env), None)
    window, head_window = _windows(store, env, spec, now)
    return EnvironmentOverview(
        name=env,
        description=spec.description if spec else None,
        declared=declared,
        protected=bool(spec and spec.protected),
        approvals_required=spec.approvals.required if spec else 0,
        allow_override=bool(spec and spec.allow_override),
        previous=previous,
        instances=0,
        last_run=HistoryRow(runs[0], commit_subject(repo, runs[0].commit)) if runs else None,
        pending=ep.counts() if ep else dict.fromkeys(ACTIONS, 0),
        live=None,
        blocked=[],
        window=window,
        head_window=head_window,
    )


def _windows(
    store: StateStore, env: str, head: EnvironmentSpec | None, now: datetime
) -> tuple[WindowStatus | None, WindowStatus | None]:
    """The policy of record's window and, when the head's windows differ, the head's.
    With no policy recorded the head's windows stand alone: the gate checks the change's
    own policy in any case. (Which earlier policies it also holds in force then depends
    on reviews, which only the forge can say: not replayed here.) A recorded policy that
    cannot be read is a closed window (the gate refuses such an environment too)."""
    last = store.last_applied_run(env)
    if last is None or last.policy is None:
        return _window_of(head, now, HEAD_POLICY), None
    at = f" (commit {last.commit[:12]})" if last.commit else ""
    origin = f"run {last.id}{at}"
    try:
        record = Policy.from_document(last.policy, origin).spec
    except ReconcilerError as e:
        return WindowStatus(False, e.message, None, "UTC", origin), None
    window = _window_of(record, now, origin)
    if head is None or windows_of(head) == windows_of(record):
        return window, None
    return window, _window_of(head, now, "the deploy branch head")


def _window_of(spec: EnvironmentSpec | None, now: datetime, origin: str) -> WindowStatus | None:
    if spec is None or not spec.windows:
        return None
    wins = windows_of(spec)
    wv = schedules.evaluate_windows(wins, now)
    zone = wv.window.timezone if wv.window else wins[0].timezone
    return WindowStatus(wv.open, wv.reason, wv.next_open, zone, origin)


def _counts(live: LiveReport, env: str) -> LiveCounts:
    items = live.drift.environments.get(env, [])
    status = [i.status for i in items]
    health: dict[str, int] = {}
    for key, h in live.health.items():
        if key.environment == env:
            health[h.health] = health.get(h.health, 0) + 1
    return LiveCounts(
        in_sync=status.count("in-sync"),
        drifted=status.count("drifted"),
        missing=status.count("missing"),
        unreadable=status.count("unreadable")
        + sum(1 for k in live.unreadable if k.environment == env),
        health=health,
    )


def _blocked(
    e: EnvironmentOverview, plan: Plan, verdicts: Mapping[str, Sequence[str]]
) -> list[str]:
    """Why the pending changes of `e` would not be applied now."""
    ep = next((p for p in plan.environments if p.environment == e.name), None)
    if ep is None or not ep.changes:
        return []
    reasons = list(dict.fromkeys(c.refused for c in ep.changes if c.refused))
    if e.window is not None and not e.window.open:
        reasons.append(e.window.blocked_reason)
    if e.head_window is not None and not e.head_window.open:
        reasons.append(f"{e.head_window.blocked_reason} (the branch head's new windows)")
    reasons.extend(verdicts.get(e.name, ()))
    return reasons


def _prompt(spec: Mapping[str, Any] | None) -> str | None:
    p = (spec or {}).get("prompt")
    if isinstance(p, dict) and "name" in p and "version" in p:
        return f"{p['name']}@{p['version']}"
    return None


def _matrix(
    chain: list[str],
    desired: Desired,
    recorded: Mapping[str, Mapping[InstanceKey, AppliedRecord]],
    changes: Mapping[tuple[str, str], Change],
    live: LiveReport | None,
) -> list[MatrixRow]:
    names: set[str] = set()
    for env in chain:
        names.update(k.name for k in desired.instances.get(env, {}) if k.kind == "Deployment")
        names.update(k.name for k in recorded[env] if k.kind == "Deployment")
    drift = (
        {i.key: i.status for items in live.drift.environments.values() for i in items}
        if live
        else {}
    )
    rows = []
    for name in sorted(names):
        cells: dict[str, Cell | None] = {}
        prev: Cell | None = None
        for env in chain:
            key = InstanceKey(env, "Deployment", name)
            cell = _cell(
                key, desired, recorded[env].get(key), changes.get((env, name)), live, drift
            )
            if cell is not None and prev is not None and prev.deployed:
                differs = not cell.deployed or cell.shown != prev.shown
                cell = Cell(**{**cell.__dict__, "differs": differs})
            cells[env] = cell
            prev = cell
        rows.append(MatrixRow(name, cells))
    return rows


def _cell(
    key: InstanceKey,
    desired: Desired,
    rec: AppliedRecord | None,
    change: Change | None,
    live: LiveReport | None,
    drift: Mapping[InstanceKey, str],
) -> Cell | None:
    declared = key in desired.instances.get(key.environment, {})
    if rec is None and not declared:
        return None
    pending: dict[str, Any] = {}
    if change is not None:
        after = change.after or {}
        pending = {
            "pending": change.action,
            "pending_model": after.get("model") if change.action != "delete" else None,
            "pending_prompt": _prompt(after) if change.action != "delete" else None,
        }
    health = live.health.get(key) if live else None
    if rec is None:
        return Cell(deployed=False, **pending)
    return Cell(
        deployed=True,
        provider=rec.provider,
        model=rec.spec.get("model"),
        prompt=_prompt(rec.spec),
        commit=rec.commit,
        run_id=rec.run_id,
        applied_at=rec.applied_at,
        health=health.health if health else None,
        health_message=(health.message or None) if health else None,
        drift=drift.get(key),
        **pending,
    )
