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
Fewer workers run when the run's providers say they can use fewer (`max_concurrency`:
the local registry, one SQLite file, is fastest with a single worker).

Readiness: after a create, update or replace, the change is done only when its object
is Healthy (or Suspended: paused on purpose), up to a readiness timeout (the
deployment's `readinessTimeoutSeconds`, else its provider's `readiness_timeout`; 0 is
ready when the write returns). A waiting change holds neither a worker nor a provider
slot: it sits in a timed queue and a worker polls `status()` when the poll is due (a
poll is a provider call and counts against the parallelism). Degraded, Missing, a
timeout or the run deadline passing fail the change; its write did happen, so
`--rollback-on-failure` restores it too and waits for the restored object.

A run deadline (`run_timeout`) bounds the whole run: once it passes, no change starts
(each is recorded `skipped`, naming the deadline), waiting ones fail at once, and the
run finishes `failed`, releasing the lock. Restoring after a failure is not cut short
by it (putting back matters more); its waits are bounded by the readiness timeouts.

A lost lock stops the run before its next provider call, not only at its next state
write: every provider write is preceded by `StateStore.check_lock` (one round trip).
Once it fails, no change starts (each is recorded `skipped`, naming the lost lock),
waiting ones fail without another poll, nothing is restored (another run may hold the
environment now), the run is recorded `failed` where the state still takes it, and the
StateMovedError is raised (exit 4).
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError, StateError, StateMovedError
from reconciler.httpclient import WaitDeadline, wait_deadline
from reconciler.instances import Instance, InstanceKey, ProviderConfig
from reconciler.log import get_logger, redact
from reconciler.plan import Change, EnvironmentPlan
from reconciler.providers.base import HealthStatus, Provider, RetryAfter
from reconciler.providers.pool import ProviderFactory, ProviderPool, entry_point_factory
from reconciler.state.base import AppliedRecord, ChangeRecord, RunRecord, StateStore
from reconciler.vocabulary import (
    READY,
    ChangeOutcome,
    EnvironmentOutcome,
    RunOutcome,
    Trigger,
)

log = get_logger("reconciler.executor")

ROLLBACK_REASON = "rollback-on-failure"
#: The longest pause between two health polls a provider's Retry-After can ask for.
RETRY_AFTER_CAP = 300.0
#: Where a run's deadline comes from, for its message.
RUN_TIMEOUT_SOURCE = "--run-timeout / RECONCILER_RUN_TIMEOUT"


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
    #: The provider's write happened (even if the object then never became Healthy):
    #: what `--rollback-on-failure` puts back.
    written: bool = False
    #: The last health seen while waiting (None: not waited for).
    health: HealthStatus | None = None


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A waiting change's health changed (`health` None: it stopped waiting)."""

    change: Change
    health: HealthStatus | None
    waited: float


@dataclass(frozen=True)
class RunDeadline:
    """When a run must be over (monotonic clock), and how to name it in a message."""

    seconds: float
    at: float
    source: str = RUN_TIMEOUT_SOURCE

    @classmethod
    def starting_now(cls, seconds: float, source: str = RUN_TIMEOUT_SOURCE) -> RunDeadline:
        return cls(seconds, time.monotonic() + seconds, source)

    def passed(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.at

    def left(self) -> float:
        return self.at - time.monotonic()

    def __str__(self) -> str:
        return f"the run deadline of {self.seconds:g} s ({self.source})"


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


@dataclass
class Verification:
    """What the checks after a run said: each failure as a line (none: passed), whether
    to restore what the run wrote, and what the run record keeps of them."""

    failures: list[str] = field(default_factory=list)
    rollback: bool = False
    details: dict[str, Any] = field(default_factory=dict)


#: After a run applied every change, still under its lock: (environment, run id, the
#: changes' results, the run's providers) → what the checks of what it applied said.
AfterApplyFn = Callable[[str, str, Sequence["ChangeResult"], ProviderPool], Verification]

#: Told of every finished change; called from worker threads, one call at a time.
ProgressFn = Callable[[ChangeResult], None]
#: Told when a waiting change's health changes; from worker threads, one at a time.
HealthFn = Callable[[HealthEvent], None]


def readiness_timeout(provider: Provider, inst: Instance | None) -> float:
    """How long to wait for `inst` to become Healthy: its own `readinessTimeoutSeconds`,
    else its provider's default; 0 means ready when the write returns."""
    own = inst.spec.get("readinessTimeoutSeconds") if inst is not None else None
    if isinstance(own, int | float) and not isinstance(own, bool) and own > 0:
        return float(own)
    return max(0.0, float(provider.readiness_timeout))


def health_failure(status: HealthStatus) -> str | None:
    """Why `status` fails a change just written, or None when it does not (yet)."""
    if status.health in READY or status.health == "Progressing":
        return None
    return _health_text(status)


def _health_text(status: HealthStatus | None) -> str:
    if status is None:
        return "no health read yet"
    return f"{status.health}: {status.message}" if status.message else status.health


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
        health: HealthFn | None = None,
        deadline: RunDeadline | None = None,
    ) -> None:
        self.store = store
        self.desired = desired
        self.providers = providers
        self.parallelism = max(1, parallelism)
        self.progress = progress
        self.on_health = health
        self.deadline = deadline
        self._telling = threading.Lock()  # health callbacks see one event at a time
        #: Provider calls under way at once: the parallelism. A worker records its
        #: change after giving its slot back, so the slots stay busy with calls.
        self._slots = threading.BoundedSemaphore(self.parallelism)
        #: Why the last run stopped calling providers: its lock was found lost.
        self.lock_lost: StateError | None = None

    # -- one change ------------------------------------------------------------------

    def do(
        self, ch: Change, run_id: str, commit: str | None, stop: threading.Event | None = None
    ) -> ChangeResult | Waiting:
        """Apply one change: recorded at once when it needs no waiting, else handed back
        as `Waiting` (poll it with `poll`). A provider failure is the change's outcome;
        a state failure is raised (nothing can be recorded reliably any more). Once
        `stop` is set, a change still waiting for a provider slot does not start, nor
        one whose lock is found lost (`_LockLost`) just before its provider call."""
        recorded = None
        if ch.action != "create":
            recorded = self.store.applied(ch.environment, (ch.key,)).get(ch.key)
        try:
            with self._slots:
                if stop is not None and stop.is_set():
                    raise _NotStarted
                self._check_lock(ch.environment)
                provider_id = self._call_provider(ch, recorded)
        except (_NotStarted, _LockLost):
            raise
        except Exception as e:  # a provider plugin's bug must not lose the run record
            return self._record_failure(ch, run_id, _error_text(e))
        waiting = self._waiting(ch, recorded, provider_id)
        if waiting is not None:
            return waiting
        self._record_success(ch, run_id, commit, provider_id, recorded)
        return ChangeResult(ch, "applied", provider_id=provider_id, written=True)

    def _waiting(
        self, ch: Change, recorded: AppliedRecord | None, provider_id: str | None
    ) -> Waiting | None:
        """The wait a written change needs before it counts as applied, if any."""
        if ch.action == "delete":
            return None
        inst = self.desired[ch.key]
        prov = self.providers.get(inst.provider)
        timeout = readiness_timeout(prov, inst)
        if timeout <= 0:
            return None
        now = time.monotonic()
        deadline = now + timeout
        if self.deadline is not None:
            deadline = min(deadline, self.deadline.at)
        interval = max(0.0, prov.polling_interval())
        return Waiting(
            change=ch,
            provider=prov,
            provider_id=provider_id,
            recorded=recorded,
            timeout=timeout,
            started=now,
            deadline=deadline,
            interval=interval,
            due=min(now + interval, deadline),
        )

    def poll(
        self, w: Waiting, run_id: str, commit: str | None, stop: threading.Event | None = None
    ) -> ChangeResult | Waiting:
        """Ask a waiting change's health once: a result when it is settled (and then
        recorded), else `w` again with its next poll due."""
        ch = w.change
        retry: float | None = None
        status: HealthStatus | None
        try:
            with self._slots:
                if stop is not None and stop.is_set():
                    raise _NotStarted
                status = w.provider.status(ch.kind, ch.name, ch.environment, w.provider_id)
        except _NotStarted:
            raise
        except RetryAfter as e:
            status, retry = w.last, min(max(e.seconds, w.interval), RETRY_AFTER_CAP)
            log.info(
                "health.later",
                environment=ch.environment,
                kind=ch.kind,
                name=ch.name,
                wait=round(retry, 3),
                reason=e.message,
            )
        except Exception as e:
            return self._fail_written(w, run_id, f"cannot read its health: {_error_text(e)}")
        now = time.monotonic()
        if status is not None and status != w.last:
            w.last = status
            self._tell_health(ch, status, now - w.started)
        if status is not None and status.health in READY:
            self._record_success(ch, run_id, commit, w.provider_id, w.recorded)
            return ChangeResult(
                ch, "applied", provider_id=w.provider_id, written=True, health=status
            )
        if status is not None and (failure := health_failure(status)) is not None:
            return self._fail_written(w, run_id, failure)
        delay = w.interval if retry is None else retry
        if now >= w.deadline or (retry is not None and now + delay > w.deadline):
            return self._fail_written(w, run_id, self._timed_out(w, now, retry))
        w.due = min(now + delay, w.deadline)
        return w

    def _check_lock(self, environment: str) -> None:
        """The lock is still this run's, else `_LockLost`. A state that cannot say so is
        taken as a lost lock too: no provider call is made on a lock not known held."""
        try:
            self.store.check_lock(environment)
        except StateError as e:
            raise _LockLost(e) from None

    def fail_waiting(self, w: Waiting, run_id: str, message: str) -> ChangeResult:
        """Fail a waiting change without polling it again (its lock was lost)."""
        return self._fail_written(w, run_id, message)

    def expire(self, w: Waiting, run_id: str) -> ChangeResult:
        """Fail a waiting change at once (the run deadline passed)."""
        return self._fail_written(w, run_id, self._timed_out(w, time.monotonic(), None))

    def abandon(self, w: Waiting, run_id: str, why: str) -> None:
        """Record a waiting change as failed when the run stops before it is Healthy
        (no health callback: the run is stopping, maybe because one failed)."""
        self._record_unapplied(w.change, run_id, "failed", why, w.provider_id)

    def _timed_out(self, w: Waiting, now: float, retry: float | None) -> str:
        seen = _health_text(w.last)
        if self.deadline is not None and w.deadline >= self.deadline.at and now >= w.deadline:
            return f"still {seen} when {self.deadline} passed"
        if retry is not None:
            return (
                f"still {seen}; the provider asked to wait {retry:g} s more, past its "
                f"readiness timeout of {w.timeout:g} s"
            )
        return f"not Healthy within its readiness timeout of {w.timeout:g} s: {seen}"

    def _fail_written(self, w: Waiting, run_id: str, message: str) -> ChangeResult:
        """The write happened, the object is not Healthy: the change failed. The state
        keeps the spec from before (a re-run retries), the change record says why."""
        self._tell_health(w.change, None, time.monotonic() - w.started)
        self._record_unapplied(w.change, run_id, "failed", message, w.provider_id)
        return ChangeResult(
            w.change, "failed", error=message, provider_id=w.provider_id, written=True,
            health=w.last,
        )  # fmt: skip

    def _tell_health(self, ch: Change, status: HealthStatus | None, waited: float) -> None:
        """A log line per health change (what CI shows) and the live view's callback."""
        if status is not None:
            log.info(
                "health",
                environment=ch.environment,
                kind=ch.kind,
                name=ch.name,
                health=status.health,
                message=status.message or None,
                waited=round(waited, 1),
            )
        if self.on_health is not None:
            with self._telling:
                self.on_health(HealthEvent(ch, status, waited))

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
            spec_json=inst.canonical(),
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
        return self.skip_because(ch, run_id, f"{blocker.address} did not apply")

    def skip_because(self, ch: Change, run_id: str, message: str) -> ChangeResult:
        self._record_unapplied(ch, run_id, "skipped", message)
        return ChangeResult(ch, "skipped", error=message)

    def _record_unapplied(
        self,
        ch: Change,
        run_id: str,
        outcome: ChangeOutcome,
        message: str,
        provider_id: str | None = None,
    ) -> None:
        change = ChangeRecord(
            key=ch.key,
            action=ch.action,
            outcome=outcome,
            error=message,
            provider_id=provider_id,
            before_hash=None,
            after_hash=None,
            diff=_diff_of(ch),
        )
        self.store.record_change(run_id, change, None, None)

    # -- the whole environment ---------------------------------------------------------

    def run(self, plan: EnvironmentPlan, run_id: str, commit: str | None) -> list[ChangeResult]:
        """Execute in dependency order; independent changes run concurrently.

        The first exception (a state write failing in a worker, the progress callback,
        Ctrl-C) stops new changes from starting and polls from being made; the calls
        under way finish and are recorded, then it is raised."""
        schedule = _Schedule(self, plan, run_id, commit)
        self.lock_lost = None
        count = worker_count(self.parallelism, len(plan.changes))
        cap = self._concurrency({c.provider for c in plan.changes})
        workers = [
            threading.Thread(target=self._worker(schedule), name=f"apply-{i}")
            for i in range(count if cap is None else max(1, min(count, cap)))
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
            schedule.record_abandoned()
            self.lock_lost = schedule.lost
        return schedule.results()

    def _worker(self, schedule: _Schedule) -> Callable[[], None]:
        """A worker's body: the schedule's work, with every HTTP retry wait bounded by
        the run deadline (a server asking for a longer wait fails the call at once)."""
        deadline = self.deadline
        if deadline is None:
            return schedule.work

        def work() -> None:
            with wait_deadline(WaitDeadline(deadline.left, str(deadline))):
                schedule.work()

        return work

    def _concurrency(self, providers: set[str]) -> int | None:
        """How many workers the run's providers can keep busy together; None: no
        limit but the parallelism. A provider that cannot be made counts as no limit:
        its changes fail one by one, as they would anyway."""
        total = 0
        for name in providers:
            try:
                limit = self.providers.get(name).max_concurrency
            except Exception:
                return None
            if limit is None:
                return None
            total += limit
        return total

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
        """Put back the recorded specs of what this run wrote (newest first), each
        waited for until Healthy like any change. Every failure is the restore's
        outcome for that change; the others still go on."""
        restored: list[ChangeResult] = []
        for res in reversed([r for r in results if r.written]):
            try:
                self._restore_one(res, before.get(res.change.key), run_id)
            except Exception as e:
                restored.append(ChangeResult(res.change, "failed", error=_error_text(e)))
            else:
                restored.append(ChangeResult(res.change, "applied"))
        return restored

    def _restore_one(self, res: ChangeResult, old: AppliedRecord | None, run_id: str) -> None:
        ch = res.change
        self.store.check_lock(ch.environment)  # its failure is this restore's outcome
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
        # Recorded as soon as it is written, as any change: the state must say what the
        # provider holds even when the wait below fails (the restore is then reported
        # failed, and the state already names the spec it put back).
        self.store.record_change(run_id, change, rec, None)
        self._wait_restored(prov, inst, live_id)

    def _wait_restored(self, prov: Provider, inst: Instance, provider_id: str | None) -> None:
        """Block until a restored object is Healthy (restore runs alone, after the
        workers); raise when it fails or times out. Ctrl-C interrupts the sleep."""
        timeout = readiness_timeout(prov, inst)
        if timeout <= 0:
            return
        started = time.monotonic()
        deadline = started + timeout
        interval = max(0.0, prov.polling_interval())
        last: HealthStatus | None = None
        while True:
            delay = interval
            try:
                status = prov.status(inst.kind, inst.name, inst.environment, provider_id)
            except RetryAfter as e:
                delay = min(max(e.seconds, interval), RETRY_AFTER_CAP)
            else:
                if status != last:
                    last = status
                    self._tell_health(_restore_change(inst), status, time.monotonic() - started)
                if status.health in READY:
                    return
                if (failure := health_failure(status)) is not None:
                    raise ReconcilerError(f"restored, then {failure}")
            now = time.monotonic()
            if now >= deadline or now + delay > deadline:
                raise ReconcilerError(
                    f"restored, then not Healthy within its readiness timeout of {timeout:g} s: "
                    f"{_health_text(last)}"
                )
            time.sleep(delay)


def _restore_change(inst: Instance) -> Change:
    """The change a restore makes, as health events name it."""
    return Change("update", inst.key, inst.provider, None, inst.body())


@dataclass(slots=True, eq=False)
class Waiting:
    """A written change whose object is not Healthy yet, and when to ask again."""

    change: Change
    provider: Provider
    provider_id: str | None
    recorded: AppliedRecord | None
    timeout: float
    started: float
    deadline: float  # the readiness timeout or the run deadline, whichever is first
    interval: float
    due: float
    last: HealthStatus | None = None


class _NotStarted(BaseException):
    """The run stopped while this change waited for a provider slot."""


class _LockLost(BaseException):
    """The run's lock was found lost just before a provider call (which was not made)."""

    def __init__(self, error: StateError) -> None:
        super().__init__(error.message)
        self.error = error


class _Schedule:
    """One run's ready queue, shared by the workers. A worker settles the change it
    finished and takes the next ready one itself, so a change costs no hand-off to a
    coordinating thread and the work per change does not grow with the plan.

    Changes waiting to become Healthy sit in a heap by the time their next poll is
    due; a worker takes a due poll before a ready change (finishing a change frees its
    dependants), and sleeps until the next poll is due when there is nothing else."""

    def __init__(
        self, executor: Executor, plan: EnvironmentPlan, run_id: str, commit: str | None
    ) -> None:
        self.executor = executor
        self.run_id = run_id
        self.commit = commit
        self.changes = {c.key: c for c in plan.changes}
        self.graph = dependency_order(plan.changes)
        self.ready = deque(self.graph.get_ready())
        self.polls: list[tuple[float, int, Waiting]] = []
        self._seq = itertools.count()
        self.done: dict[InstanceKey, ChangeResult] = {}
        self.busy = 0  # taken, not yet settled (waiting ones included)
        self.failure: BaseException | None = None
        #: Set when the lock was found lost: nothing calls a provider after that.
        self.lost: StateError | None = None
        self.stopping = threading.Event()
        self.cond = threading.Condition()

    def work(self) -> None:
        while (task := self._take()) is not None:
            try:
                try:
                    res = self._run(task)
                except _LockLost as lost:
                    with self.cond:
                        self.lost = self.lost or lost.error
                    assert not isinstance(task, Waiting)  # only a write checks the lock
                    res = self._not_started(task)
            except _NotStarted:
                return
            except BaseException as e:  # e.g. a state write failed: stop the run
                self.stop(e)
                return
            if isinstance(res, Waiting):
                self._park(res)
            else:
                self._settle(res)

    def _not_started(self, task: Change) -> ChangeResult:
        assert self.lost is not None
        return self.executor.skip_because(task, self.run_id, f"not started: {self.lost.message}")

    def _run(self, task: Change | Waiting) -> ChangeResult | Waiting:
        ex = self.executor
        deadline = ex.deadline
        if self.lost is not None:  # no provider call any more, not even a health poll
            if isinstance(task, Waiting):
                why = f"not Healthy yet when the run stopped: {self.lost.message}"
                return ex.fail_waiting(task, self.run_id, why)
            return self._not_started(task)
        if isinstance(task, Waiting):
            if deadline is not None and deadline.passed():
                return ex.expire(task, self.run_id)
            return ex.poll(task, self.run_id, self.commit, self.stopping)
        if deadline is not None and deadline.passed():
            return ex.skip_because(task, self.run_id, f"not started: {deadline} passed")
        blocker = _failed_dependency(task, self.done)
        if blocker is not None:
            return ex.skip(task, self.run_id, blocker)
        return ex.do(task, self.run_id, self.commit, self.stopping)

    def _take(self) -> Change | Waiting | None:
        """A due poll, else the next ready change; None when all are settled or the run
        is stopping. Waits for whichever comes first: a change ready, a poll due."""
        with self.cond:
            while self.failure is None:
                if self.polls and self.polls[0][0] <= time.monotonic():
                    return heapq.heappop(self.polls)[2]
                if self.ready:
                    self.busy += 1
                    return self.changes[self.ready.popleft()]
                if not self.busy:
                    return None
                self.cond.wait(self.polls[0][0] - time.monotonic() if self.polls else None)
            return None

    def _park(self, w: Waiting) -> None:
        with self.cond:
            heapq.heappush(self.polls, (w.due, next(self._seq), w))
            self.cond.notify()  # an idle worker may have been sleeping for a later poll

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

    def record_abandoned(self) -> None:
        """Once the workers are gone: when the run stopped (Ctrl-C, a callback failing),
        the changes still waiting to become Healthy were written but will never be
        polled again; record each as failed, saying so (the state keeps the spec from
        before, so a re-run tries again). Not when the state itself failed."""
        if self.failure is None or isinstance(self.failure, StateError):
            return
        why = f"not Healthy yet when the run stopped ({_error_text(self.failure)})"
        while self.polls:
            w = heapq.heappop(self.polls)[2]
            try:
                self.executor.abandon(w, self.run_id, why)
            except Exception as e:  # the run's own error is the one to report
                log.warning("cannot record a change", change=w.change.address, error=_error_text(e))
                return

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
    health: HealthFn | None = None,
    run_timeout: float | None = None,
    run_timeout_source: str = RUN_TIMEOUT_SOURCE,
    provider_factory: ProviderFactory | None = None,
    after_apply: AfterApplyFn | None = None,
) -> EnvironmentResult:
    """Lock, verify, run, record. `replan` recomputes the plan under the lock; without
    it (a saved plan) the state serial must still be the one the plan was made at.
    `run_timeout` (seconds from now) is the run deadline, named by `run_timeout_source`
    in messages; `provider_factory` makes provider clients (default: the plugins)."""
    run_id = new_run_id()
    deadline = (
        None
        if run_timeout is None
        else RunDeadline.starting_now(run_timeout, run_timeout_source or RUN_TIMEOUT_SOURCE)
    )
    factory = provider_factory or entry_point_factory(repo_root=repo_root, env=env)
    with ProviderPool(providers, factory) as pool:
        run = _Run(
            store,
            run_id,
            context,
            Executor(
                store,
                desired=desired,
                providers=pool,
                parallelism=parallelism,
                progress=progress,
                health=health,
                deadline=deadline,
            ),
            rollback_on_failure=rollback_on_failure,
            break_lock=break_lock,
            after_apply=after_apply,
            pool=pool,
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
        after_apply: AfterApplyFn | None = None,
        pool: ProviderPool | None = None,
    ) -> None:
        self.after_apply = after_apply
        self.pool = pool
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
        if self.rollback_on_failure or self.after_apply is not None:
            # what restore puts back (after a failed change or check): read it first
            before = self.store.applied(envname, [c.key for c in plan.changes])
        self.store.begin_run(self._record(envname))
        try:
            results = self.executor.run(plan, self.run_id, self.context.commit)
            failed = [r for r in results if r.outcome != "applied"]
            restored: list[ChangeResult] = []
            check_failure: str | None = None
            lost = self.executor.lock_lost
            if lost is not None:  # another run may hold the environment: put nothing back
                self.details["lock_lost"] = lost.message
            elif failed and self.rollback_on_failure:
                restored = self._restore(results, before)
            elif not failed and self.after_apply is not None and self.pool is not None:
                checked = self.after_apply(envname, self.run_id, results, self.pool)
                self.details.update(checked.details)
                if checked.failures:
                    check_failure = "checks failed: " + "; ".join(checked.failures)
                    if checked.rollback or self.rollback_on_failure:
                        restored = self._restore(results, before)
        except BaseException as e:
            self._finish_after(e)
            raise
        outcome: EnvironmentOutcome = "failed" if failed or check_failure else "applied"
        message = check_failure
        if failed:
            first = next((r for r in failed if r.outcome == "failed"), failed[0])
            message = f"{first.change.address}: {first.error}"
            deadline = self.executor.deadline
            if deadline is not None and deadline.passed():
                message = f"{deadline} passed; {message}"
                self.details["deadline"] = f"{deadline} passed"
        self.store.finish_run(self.run_id, outcome, self.details)
        if lost is not None:  # recorded `failed`, with the changes not started: now stop
            raise lost
        return EnvironmentResult(
            environment=envname,
            outcome=outcome,
            run_id=self.run_id,
            results=results,
            message=message,
            restored=restored,
        )

    def _restore(
        self, results: Sequence[ChangeResult], before: Mapping[InstanceKey, AppliedRecord]
    ) -> list[ChangeResult]:
        restored = self.executor.restore(results, before, self.run_id)
        self.details["rolled_back"] = [r.change.address for r in restored if r.outcome == "applied"]
        if any(r.outcome != "applied" for r in restored):
            self.details["restore_failed"] = {
                r.change.address: r.error for r in restored if r.outcome != "applied"
            }
        return restored

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
