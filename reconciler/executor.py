"""The executor: the only code that changes providers.

Per environment, under its lock: re-check the plan against the state serial, run the
changes in dependency order with bounded concurrency, record each change in the state
the moment it succeeds (so a crash loses nothing and a re-run converges), skip the
dependants of a failed change, optionally restore what this run changed when anything
failed, and finish with a run record. Whatever goes wrong after the run began (a state
write failing, a bug), the run is finished `failed` with the reason before the lock
is released.

Scheduling is a ready queue (`graphlib.TopologicalSorter`): a change is queued when its
last dependency finishes, so the work per change is constant however large the plan.
Worker threads take ready changes themselves; `parallelism` bounds the provider calls
under way, and a few spare workers write state records meanwhile (`worker_count`).
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError, StateMovedError
from reconciler.instances import Instance, InstanceKey, ProviderConfig
from reconciler.log import get_logger, redact
from reconciler.plan import Change, EnvironmentPlan
from reconciler.providers.pool import ProviderFactory, ProviderPool, entry_point_factory
from reconciler.state.base import AppliedRecord, ChangeRecord, RunRecord, StateStore
from reconciler.vocabulary import ChangeOutcome, EnvironmentOutcome, RunOutcome, Trigger

log = get_logger("reconciler.executor")

ROLLBACK_REASON = "rollback-on-failure"


def worker_count(parallelism: int, changes: int) -> int:
    """Threads for a run: a few beyond the parallelism, which record finished changes
    while `parallelism` provider calls go on, so recording never leaves a slot idle."""
    return max(1, min(parallelism + max(2, parallelism // 4), changes))


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: UTC time plus randomness."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass
class RunContext:
    """What a run records beyond its changes (who, why, from where)."""

    commit: str | None
    trigger: Trigger = "apply"
    pull_request: int | None = None
    author: str | None = None
    approvers: list[str] = field(default_factory=list)
    reverted_commits: list[str] = field(default_factory=list)
    reverted_runs: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: The policy the run leaves in force: the next run is judged by it.
    policy: dict[str, Any] | None = None


@dataclass(slots=True)
class ChangeResult:
    change: Change
    outcome: ChangeOutcome
    error: str | None = None
    provider_id: str | None = None


@dataclass
class EnvironmentResult:
    environment: str
    outcome: EnvironmentOutcome
    run_id: str | None = None
    results: list[ChangeResult] = field(default_factory=list)
    message: str | None = None
    restored: list[ChangeResult] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = {"applied": 0, "failed": 0, "skipped": 0}
        for r in self.results:
            c[r.outcome] += 1
        return c


#: Told of every finished change; called from worker threads, one call at a time.
ProgressFn = Callable[[ChangeResult], None]


def instance_from_record(rec: AppliedRecord) -> Instance:
    """The instance a recorded body describes (heal and restore re-apply it)."""
    spec = {k: v for k, v in rec.spec.items() if k not in ("name", "environment", "labels")}
    return Instance(
        environment=rec.environment,
        kind=rec.kind,
        name=rec.name,
        provider=rec.provider,
        spec=spec,
        labels=dict(rec.spec.get("labels") or {}),
    )


def _error_text(e: BaseException) -> str:
    """One redacted line for a run or change record."""
    if isinstance(e, ReconcilerError):
        return redact(e.message)
    text = str(e)
    return redact(f"{type(e).__name__}: {text}" if text else type(e).__name__)


def dependency_order(changes: Sequence[Change]) -> TopologicalSorter[InstanceKey]:
    """The changes' dependency graph, prepared; dependencies outside the plan are met.

    Expansion never produces a cycle, but a hand-edited saved plan could: refuse it
    before anything runs rather than guess an order."""
    keys = {c.key for c in changes}
    graph: TopologicalSorter[InstanceKey] = TopologicalSorter()
    for c in changes:
        graph.add(c.key, *(d for d in c.depends_on if d in keys))
    try:
        graph.prepare()
    except CycleError as e:
        cycle = " → ".join(k.address for k in e.args[1])
        raise ReconcilerError(f"changes wait on each other ({cycle}); refusing to guess") from None
    return graph


class Executor:
    """Applies one environment's plan; see the module docstring for the guarantees."""

    def __init__(
        self,
        store: StateStore,
        *,
        desired: Mapping[InstanceKey, Instance],
        providers: ProviderPool,
        parallelism: int = 8,
        progress: ProgressFn | None = None,
    ) -> None:
        self.store = store
        self.desired = desired
        self.providers = providers
        self.parallelism = max(1, parallelism)
        self.progress = progress
        #: Provider calls under way at once: the parallelism. A worker records its
        #: change after giving its slot back, so the slots stay busy with calls.
        self._slots = threading.BoundedSemaphore(self.parallelism)

    # -- one change ------------------------------------------------------------------

    def do(
        self, ch: Change, run_id: str, commit: str | None, stop: threading.Event | None = None
    ) -> ChangeResult:
        """Apply and record one change. A provider failure is the change's outcome; a
        state failure is raised (nothing can be recorded reliably any more). Once
        `stop` is set, a change still waiting for a provider slot does not start."""
        recorded = None
        if ch.action != "create":
            recorded = self.store.applied(ch.environment, (ch.key,)).get(ch.key)
        try:
            with self._slots:
                if stop is not None and stop.is_set():
                    raise _NotStarted
                provider_id = self._call_provider(ch, recorded)
        except _NotStarted:
            raise
        except Exception as e:  # a provider plugin's bug must not lose the run record
            return self._record_failure(ch, run_id, _error_text(e))
        self._record_success(ch, run_id, commit, provider_id, recorded)
        return ChangeResult(ch, "applied", provider_id=provider_id)

    def _call_provider(self, ch: Change, recorded: AppliedRecord | None) -> str | None:
        if ch.action == "delete":
            old_id = recorded.provider_id if recorded else None
            self.providers.get(ch.provider).delete(ch.kind, ch.name, ch.environment, old_id)
            return None
        inst = self.desired.get(ch.key)
        if inst is None:
            raise ReconcilerError(f"{ch.address} is not in the desired state any more")
        prov = self.providers.get(inst.provider)
        if ch.action == "update" and recorded is not None and recorded.provider_id is not None:
            prov.update(inst, recorded.provider_id)
            return recorded.provider_id
        if ch.action == "replace" and recorded is not None:
            # remove the old object (maybe on another provider), then create
            self.providers.get(recorded.provider).delete(
                ch.kind, ch.name, ch.environment, recorded.provider_id
            )
        return prov.create(inst)

    def _record_success(
        self,
        ch: Change,
        run_id: str,
        commit: str | None,
        provider_id: str | None,
        recorded: AppliedRecord | None,
    ) -> None:
        before_hash = recorded.spec_hash if recorded else None
        if ch.action == "delete":
            self.store.record_change(
                run_id,
                ChangeRecord(
                    key=ch.key,
                    action=ch.action,
                    outcome="applied",
                    error=None,
                    provider_id=None,
                    before_hash=before_hash,
                    after_hash=None,
                    diff=_diff_of(ch),
                ),
                None,
                ch.key,
            )
            return
        inst = self.desired[ch.key]
        applied = AppliedRecord(
            environment=ch.environment,
            kind=ch.kind,
            name=ch.name,
            provider=inst.provider,
            provider_id=provider_id,
            spec=inst.body(),
            spec_hash=inst.hash(),
            secret_fingerprints=dict(ch.secret_fingerprints),
            commit=commit,
            run_id=run_id,
            applied_at=datetime.now(UTC),
        )
        change = ChangeRecord(
            key=ch.key,
            action=ch.action,
            outcome="applied",
            error=None,
            provider_id=provider_id,
            before_hash=before_hash,
            after_hash=applied.spec_hash,
            diff=_diff_of(ch),
        )
        self.store.record_change(run_id, change, applied, None)

    def _record_failure(self, ch: Change, run_id: str, message: str) -> ChangeResult:
        self._record_unapplied(ch, run_id, "failed", message)
        return ChangeResult(ch, "failed", error=message)

    def skip(self, ch: Change, run_id: str, blocker: InstanceKey) -> ChangeResult:
        message = f"{blocker.address} did not apply"
        self._record_unapplied(ch, run_id, "skipped", message)
        return ChangeResult(ch, "skipped", error=message)

    def _record_unapplied(
        self, ch: Change, run_id: str, outcome: ChangeOutcome, message: str
    ) -> None:
        change = ChangeRecord(
            key=ch.key,
            action=ch.action,
            outcome=outcome,
            error=message,
            provider_id=None,
            before_hash=None,
            after_hash=None,
            diff=_diff_of(ch),
        )
        self.store.record_change(run_id, change, None, None)

    # -- the whole environment ---------------------------------------------------------

    def run(self, plan: EnvironmentPlan, run_id: str, commit: str | None) -> list[ChangeResult]:
        """Execute in dependency order; independent changes run concurrently.

        The first exception (a state write failing in a worker, the progress callback,
        Ctrl-C) stops new changes from starting; the ones under way finish and are
        recorded, then it is raised."""
        schedule = _Schedule(self, plan, run_id, commit)
        workers = [
            threading.Thread(target=schedule.work, name=f"apply-{i}")
            for i in range(worker_count(self.parallelism, len(plan.changes)))
        ]
        for w in workers:
            w.start()
        try:
            for w in workers:
                w.join()
        except BaseException as e:
            schedule.stop(e)
            raise
        finally:  # never return (or raise) while a worker may still write
            for w in workers:
                w.join()
        return schedule.results()

    def report(self, res: ChangeResult) -> None:
        ch = res.change
        log.info(
            "change",
            environment=ch.environment,
            action=ch.action,
            kind=ch.kind,
            name=ch.name,
            outcome=res.outcome,
            error=res.error,
        )
        if self.progress:
            self.progress(res)

    def restore(
        self,
        results: Sequence[ChangeResult],
        before: Mapping[InstanceKey, AppliedRecord],
        run_id: str,
    ) -> list[ChangeResult]:
        """Put back the recorded specs of what this run changed (newest first). Every
        failure is the restore's outcome for that change; the others still go on."""
        restored: list[ChangeResult] = []
        for res in reversed([r for r in results if r.outcome == "applied"]):
            try:
                self._restore_one(res, before.get(res.change.key), run_id)
            except Exception as e:
                restored.append(ChangeResult(res.change, "failed", error=_error_text(e)))
            else:
                restored.append(ChangeResult(res.change, "applied"))
        return restored

    def _restore_one(self, res: ChangeResult, old: AppliedRecord | None, run_id: str) -> None:
        ch = res.change
        if old is None:  # it was created: remove it
            inst = self.desired.get(ch.key)
            provider = inst.provider if inst else ch.provider
            self.providers.get(provider).delete(ch.kind, ch.name, ch.environment, res.provider_id)
            change = ChangeRecord(
                key=ch.key,
                action="delete",
                outcome="applied",
                error=ROLLBACK_REASON,
                provider_id=None,
                before_hash=None,
                after_hash=None,
            )
            self.store.record_change(run_id, change, None, ch.key)
            return
        prov = self.providers.get(old.provider)
        inst = instance_from_record(old)
        live_id = old.provider_id
        if ch.action in ("delete", "replace"):
            if ch.action == "replace" and res.provider_id:
                self.providers.get(ch.provider).delete(
                    ch.kind, ch.name, ch.environment, res.provider_id
                )
            live_id = prov.create(inst)
        elif live_id is not None:
            prov.update(inst, live_id)
        else:
            live_id = prov.create(inst)
        rec = AppliedRecord(
            environment=old.environment,
            kind=old.kind,
            name=old.name,
            provider=old.provider,
            provider_id=live_id,
            spec=old.spec,
            spec_hash=old.spec_hash,
            secret_fingerprints=old.secret_fingerprints,
            commit=old.commit,
            run_id=run_id,
            applied_at=datetime.now(UTC),
        )
        change = ChangeRecord(
            key=ch.key,
            action="update",
            outcome="applied",
            error=ROLLBACK_REASON,
            provider_id=live_id,
            before_hash=None,
            after_hash=old.spec_hash,
        )
        self.store.record_change(run_id, change, rec, None)


class _NotStarted(BaseException):
    """The run stopped while this change waited for a provider slot."""


class _Schedule:
    """One run's ready queue, shared by the workers. A worker settles the change it
    finished and takes the next ready one itself, so a change costs no hand-off to a
    coordinating thread and the work per change does not grow with the plan."""

    def __init__(
        self, executor: Executor, plan: EnvironmentPlan, run_id: str, commit: str | None
    ) -> None:
        self.executor = executor
        self.run_id = run_id
        self.commit = commit
        self.changes = {c.key: c for c in plan.changes}
        self.graph = dependency_order(plan.changes)
        self.ready = deque(self.graph.get_ready())
        self.done: dict[InstanceKey, ChangeResult] = {}
        self.busy = 0  # taken, not yet settled
        self.failure: BaseException | None = None
        self.stopping = threading.Event()
        self.cond = threading.Condition()

    def work(self) -> None:
        while (ch := self._take()) is not None:
            try:
                blocker = _failed_dependency(ch, self.done)
                if blocker is None:
                    res = self.executor.do(ch, self.run_id, self.commit, self.stopping)
                else:
                    res = self.executor.skip(ch, self.run_id, blocker)
            except _NotStarted:
                return
            except BaseException as e:  # e.g. a state write failed: stop the run
                self.stop(e)
                return
            self._settle(res)

    def _take(self) -> Change | None:
        """The next ready change; None when all are settled or the run is stopping."""
        with self.cond:
            while not self.ready and self.busy and self.failure is None:
                self.cond.wait()
            if self.failure is not None or not self.ready:
                return None
            self.busy += 1
            return self.changes[self.ready.popleft()]

    def _settle(self, res: ChangeResult) -> None:
        key = res.change.key
        with self.cond:
            self.busy -= 1
            self.done[key] = res
            self.graph.done(key)
            freed = self.graph.get_ready()
            self.ready.extend(freed)
            if not self.busy and not self.ready:
                self.cond.notify_all()  # everything is settled: let idle workers leave
            elif freed:
                self.cond.notify(len(freed))
            try:
                self.executor.report(res)  # under the lock: progress sees one at a time
            except BaseException as e:
                self._fail(e)

    def stop(self, e: BaseException) -> None:
        with self.cond:
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        if self.failure is None:
            self.failure = e
        self.stopping.set()
        self.cond.notify_all()

    def results(self) -> list[ChangeResult]:
        if self.failure is not None:
            raise self.failure
        return [self.done[k] for k in self.changes]


def _diff_of(ch: Change) -> list[dict[str, Any]]:
    """The change's field diff as the plan showed it (secrets masked), for history."""
    return [{"path": d.path, "before": d.before, "after": d.after} for d in ch.diff]


def _failed_dependency(ch: Change, done: Mapping[InstanceKey, ChangeResult]) -> InstanceKey | None:
    """The first dependency in this run that did not apply (its dependants are skipped)."""
    for d in ch.depends_on:
        res = done.get(d)
        if res is not None and res.outcome != "applied":
            return d
    return None


def execute_environment(
    store: StateStore,
    plan: EnvironmentPlan,
    *,
    desired: Mapping[InstanceKey, Instance],
    providers: Mapping[str, ProviderConfig],
    repo_root: Path,
    env: Mapping[str, str],
    context: RunContext,
    parallelism: int = 8,
    rollback_on_failure: bool = False,
    break_lock: bool = False,
    replan: Callable[[], EnvironmentPlan] | None = None,
    progress: ProgressFn | None = None,
    provider_factory: ProviderFactory | None = None,
) -> EnvironmentResult:
    """Lock, verify, run, record. `replan` recomputes the plan under the lock; without
    it (a saved plan) the state serial must still be the one the plan was made at.
    `provider_factory` makes provider clients (default: the registered plugins)."""
    run_id = new_run_id()
    factory = provider_factory or entry_point_factory(repo_root=repo_root, env=env)
    with ProviderPool(providers, factory) as pool:
        run = _Run(
            store,
            run_id,
            context,
            Executor(
                store, desired=desired, providers=pool, parallelism=parallelism, progress=progress
            ),
            rollback_on_failure=rollback_on_failure,
            break_lock=break_lock,
        )
        return run.under_lock(plan, replan)


class _Run:
    """One run of one environment: the lock, the run record and its outcome."""

    def __init__(
        self,
        store: StateStore,
        run_id: str,
        context: RunContext,
        executor: Executor,
        *,
        rollback_on_failure: bool,
        break_lock: bool,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.context = context
        self.executor = executor
        self.rollback_on_failure = rollback_on_failure
        self.break_lock = break_lock
        self.details = dict(context.details)
        if break_lock:
            self.details["broke_lock"] = True

    def under_lock(
        self, plan: EnvironmentPlan, replan: Callable[[], EnvironmentPlan] | None
    ) -> EnvironmentResult:
        """The run's own error is what the caller sees, even when releasing the lock
        fails after it (e.g. the lock was taken over): that failure is only logged."""
        envname = plan.environment
        first: BaseException | None = None
        try:
            with self.store.lock(envname, self.run_id, break_lock=self.break_lock):
                try:
                    return self._locked(plan, replan)
                except BaseException as e:
                    first = e
                    raise
        except BaseException as e:
            if first is None or e is first:
                raise
            log.warning(
                "cannot release the lock",
                environment=envname,
                run=self.run_id,
                error=_error_text(e),
            )
            raise first from None
        raise AssertionError("unreachable: the lock swallowed an exception")  # pragma: no cover

    def _locked(
        self, plan: EnvironmentPlan, replan: Callable[[], EnvironmentPlan] | None
    ) -> EnvironmentResult:
        envname = plan.environment
        current = self.store.serial(envname)
        if replan is not None:
            plan = replan()
        elif current != plan.serial:
            raise StateMovedError(
                f"state of {envname!r} moved since the plan was made (serial {plan.serial} → "
                f"{current}): run `reconciler plan` again"
            )
        if not plan.changes:
            return EnvironmentResult(envname, "noop", message="no changes")
        before: dict[InstanceKey, AppliedRecord] = {}
        if self.rollback_on_failure:  # what restore puts back: read before anything changes
            before = self.store.applied(envname, [c.key for c in plan.changes])
        self.store.begin_run(self._record(envname))
        try:
            results = self.executor.run(plan, self.run_id, self.context.commit)
            failed = [r for r in results if r.outcome != "applied"]
            restored: list[ChangeResult] = []
            if failed and self.rollback_on_failure:
                restored = self.executor.restore(results, before, self.run_id)
                self.details["rolled_back"] = [
                    r.change.address for r in restored if r.outcome == "applied"
                ]
                if any(r.outcome != "applied" for r in restored):
                    self.details["restore_failed"] = {
                        r.change.address: r.error for r in restored if r.outcome != "applied"
                    }
        except BaseException as e:
            self._finish_after(e)
            raise
        outcome: EnvironmentOutcome = "failed" if failed else "applied"
        self.store.finish_run(self.run_id, outcome, self.details)
        message = None
        if failed:
            first = next((r for r in failed if r.outcome == "failed"), failed[0])
            message = f"{first.change.address}: {first.error}"
        return EnvironmentResult(
            environment=envname,
            outcome=outcome,
            run_id=self.run_id,
            results=results,
            message=message,
            restored=restored,
        )

    def _record(self, envname: str) -> RunRecord:
        ctx = self.context
        return RunRecord(
            id=self.run_id,
            environment=envname,
            commit=ctx.commit,
            trigger=ctx.trigger,
            started_at=datetime.now(UTC),
            finished_at=None,
            outcome="running",
            pull_request=ctx.pull_request,
            author=ctx.author,
            approvers=list(ctx.approvers),
            reverted_commits=list(ctx.reverted_commits),
            reverted_runs=list(ctx.reverted_runs),
            changes=[],
            details=self.details,
            policy=ctx.policy,
        )

    def _finish_after(self, error: BaseException) -> None:
        """End the run with `error` as its reason. If that write fails too (the state
        is what broke), log it: the original error is the one the caller must see."""
        outcome: RunOutcome = "failed" if isinstance(error, Exception) else "interrupted"
        self.details["error"] = _error_text(error)
        try:
            self.store.finish_run(self.run_id, outcome, self.details)
        except Exception as e:
            log.warning("cannot record the end of the run", run=self.run_id, error=_error_text(e))
