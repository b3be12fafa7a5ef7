"""Schedules fire: the engine that runs each applied Schedule of each environment at its
fire times, with its `input`, as an execution with trigger `schedule`.

What it promises (docs/design.md, "Executions"):
- Only what is recorded applied fires: the Schedule's spec of record, its deployment's
  applied record, the provider settings of record.
- Exactly once per (schedule, environment, fire time): the execution is recorded with
  that fire key before anything is called, and state refuses a second (a UNIQUE column;
  a file on a compare-and-swapped ref). Several engines on one state (agents sharing a
  PostgreSQL database) never double-fire.
- Fires are looked for after the schedule's last recorded fire (or, never fired, after
  it was applied), so a fire missed while no engine ran is found by the next one: the
  latest runs late unless `startingDeadlineSeconds` has passed since its time, then it
  is recorded `missed`; older missed fires are recorded `missed` (as a Kubernetes
  CronJob, which starts at most one late job). At most `MAX_CATCH_UP` are recorded.
- `concurrency` is the CronJob's: `allow` runs beside one still running; `forbid`
  records the new fire `skipped`; `replace` marks the running one `cancelled` (its late
  answer is dropped: status changes are compare-and-set) and runs the new one.
- A schedule whose deployment is suspended (or disabled) records `skipped`; one whose
  deployment is no longer applied records `failed`, saying so. Nothing here raises out
  of a tick for one schedule's trouble.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.config import Settings
from reconciler.engine.live import Providers
from reconciler.errors import ReconcilerError
from reconciler.instances import InstanceKey
from reconciler.log import get_logger, redact
from reconciler.providers import make_provider
from reconciler.providers.base import Provider, resolve_secrets
from reconciler.redaction import Register, to_backstop
from reconciler.runs.execute import Limits, deadline_of, describe_input, execute
from reconciler.runs.model import Execution, Holder, Query, iso, new_id
from reconciler.runs.store import ExecutionStore
from reconciler.schedules import spec_next_runs
from reconciler.state.base import AppliedRecord, StateStore

log = get_logger("reconciler.fire")

Clock = Callable[[], datetime]
#: Missed fires recorded per schedule at once; older ones are not looked for.
MAX_CATCH_UP = 100
#: How far back a schedule that has not fired for long is looked at.
LOOK_BACK = timedelta(days=7)


def utc_now() -> datetime:
    return datetime.now(UTC)


def fires_between(
    spec: Mapping[str, Any], since: datetime, now: datetime
) -> tuple[list[datetime], datetime | None]:
    """The schedule's fire times in (since, now], the latest `MAX_CATCH_UP` of them, and
    its first fire after `now` (None: it ends)."""
    start = max(since, now - LOOK_BACK)
    out: list[datetime] = []
    while True:
        batch = spec_next_runs(spec, start, 4)
        out += [t for t in batch if t <= now]
        later = [t for t in batch if t > now]
        if later or len(batch) < 4:
            return out[-MAX_CATCH_UP:], later[0] if later else None
        start = batch[-1]
        out = out[-MAX_CATCH_UP:]


@dataclass
class _Call:
    execution: Execution
    provider: Provider
    deployment: AppliedRecord
    data: dict[str, Any]


@dataclass
class _Batch:
    """What one tick records together: fires that end as recorded, and calls to start."""

    records: list[Execution] = field(default_factory=list)
    calls: list[_Call] = field(default_factory=list)


@dataclass
class _Tracked:
    record: AppliedRecord
    next_fire: datetime | None


class FireEngine:
    """Fires due schedules on `tick(now)`; the calls run on a pool of `parallelism`
    threads, so one slow deployment never delays another's fire."""

    def __init__(
        self,
        settings: Settings,
        executions: ExecutionStore,
        *,
        parallelism: int | None = None,
        limits: Limits | None = None,
        environments: tuple[str, ...] = (),
        clock: Clock = utc_now,
        observe: Callable[[Execution], None] | None = None,
        register: Register = to_backstop,
    ) -> None:
        self.settings = settings
        #: Learns the secrets the calls resolve and the providers find: the session's
        #: redactor (the default only where no session exists: tests, library use).
        self.register = register
        #: What a call's start and end are recorded with (tick's `now` says what is due).
        self.clock = clock
        #: Told of every execution this engine recorded, once it ended (metrics).
        self.observe = observe
        #: Open for the engine's life (calls under way record into it); closed with it.
        self.executions = executions
        self.limits = limits or Limits(
            settings.executions.max_result_bytes, settings.executions.keep
        )
        self.environments = environments
        self.parallelism = parallelism or settings.parallelism
        self.pool = ThreadPoolExecutor(max_workers=self.parallelism, thread_name_prefix="fire")
        self.holder = Holder.me()
        self._providers: dict[tuple[str, str, str], Provider] = {}
        self._mu = threading.Lock()
        self._serials: dict[str, int] | None = None
        self._tracked: dict[InstanceKey, _Tracked] = {}
        self._applied: dict[str, dict[InstanceKey, AppliedRecord]] = {}
        self._last_fire: dict[InstanceKey, datetime] = {}
        self._fires_read: set[str] = set()
        #: Calls submitted and not yet ended: how far back in the queue a new one starts.
        self._inflight = 0

    # -- what is due -----------------------------------------------------------------

    def _refresh(self, state: StateStore, now: datetime) -> None:
        """Re-read the applied schedules when the state moved (its serials)."""
        serials = state.serials()
        if serials == self._serials:
            return
        self._serials = serials
        tracked: dict[InstanceKey, _Tracked] = {}
        for env in state.environments():
            if self.environments and env not in self.environments:
                continue
            for key, rec in state.applied(env).items():
                if key.kind != "Schedule" or rec.spec.get("enabled") is False:
                    continue
                old = self._tracked.get(key)
                same = old is not None and old.record.spec_hash == rec.spec_hash
                # A new or changed schedule is looked at now: a fire since it was applied
                # (or since its last recorded fire) may be due already.
                tracked[key] = _Tracked(rec, old.next_fire if same and old else now)
        self._tracked = tracked

    def next_due(self) -> datetime | None:
        """When the earliest tracked schedule fires next (None: nothing scheduled)."""
        dues = [t.next_fire for t in self._tracked.values() if t.next_fire is not None]
        return min(dues, default=None)

    def tick(
        self, state: StateStore, providers: Providers, now: datetime
    ) -> list[Future[Execution]]:
        """Record and start every fire due at `now`; the futures end with each call.

        Fires are recorded a batch at a time (one transaction per `parallelism` fires)
        and each batch's calls start as soon as it is recorded, so the first calls do not
        wait for every due schedule to be looked at."""
        self._refresh(state, now)
        self._applied = {}
        batch = _Batch()
        started: list[Future[Execution]] = []
        for key, t in self._tracked.items():
            if t.next_fire is None or t.next_fire > now:
                continue
            try:
                self._schedule(t.record, state, providers, now, batch)
            except ReconcilerError as e:
                log.error(
                    "schedule.error",
                    schedule=key.address,
                    env=key.environment,
                    error=redact(e.message),
                )
            nxt = spec_next_runs(t.record.spec, now, 1)
            t.next_fire = nxt[0] if nxt else None
            if len(batch.calls) >= self.parallelism:
                started += self._flush(batch)
        return started + self._flush(batch)

    def _flush(self, batch: _Batch) -> list[Future[Execution]]:
        """Record the batch (one transaction), then start the calls that are ours: a
        fire another engine recorded first is left to it."""
        items = batch.records + [c.execution for c in batch.calls]
        if not items:
            return []
        with self._mu:
            queued = self._inflight
        for i, c in enumerate(batch.calls):
            # the latest it can end: behind every call queued before it, each within its
            # own deadline (then any reader may record it abandoned: `reap`)
            rounds = 1 + (queued + i) // self.parallelism
            seconds = deadline_of(c.deployment.spec) * rounds
            c.execution.deadline = c.execution.created_at + timedelta(seconds=seconds)
        recorded = self.executions.add_many(items)
        for ex, ok in zip(batch.records, recorded, strict=False):
            if ok and self.observe is not None:
                self.observe(ex)
            if ok:
                log.info(
                    "schedule.fire",
                    schedule=ex.schedule,
                    env=ex.environment,
                    fire_time=iso(ex.fire_time),
                    status=ex.status,
                    reason=ex.error,
                )
        started = []
        for call, ok in zip(batch.calls, recorded[len(batch.records) :], strict=True):
            if not ok:
                log.debug(
                    "schedule.fire_taken",
                    schedule=call.execution.schedule,
                    env=call.execution.environment,
                    fire_time=iso(call.execution.fire_time),
                )
                continue
            ex = call.execution
            log.debug(
                "schedule.fire",
                schedule=ex.schedule,
                env=ex.environment,
                fire_time=iso(ex.fire_time),
                execution=ex.id,
            )
            future = self.pool.submit(
                execute,
                self.executions,
                ex,
                call.provider,
                call.deployment,
                call.data,
                limits=self.limits,
                clock=self.clock,
                new=False,
            )
            with self._mu:
                self._inflight += 1
            future.add_done_callback(self._done)
            started.append(future)
        if started:
            log.info(
                "schedules.fired",
                calls=len(started),
                schedules=sorted({c.execution.schedule or "" for c in batch.calls})[:10],
            )
        batch.records.clear()
        batch.calls.clear()
        return started

    # -- one schedule ----------------------------------------------------------------

    def _since(self, rec: AppliedRecord) -> datetime:
        """After the schedule's last recorded fire (or when it was applied). Read from
        the state once per schedule, then remembered: a fire another engine recorded
        meanwhile is looked at again and refused by its fire key, never run twice."""
        env = rec.environment
        if env not in self._fires_read:
            self._fires_read.add(env)
            for name, at in self.executions.last_fires(env).items():
                key = InstanceKey(env, "Schedule", name)
                self._last_fire[key] = max(at, self._last_fire.get(key, at))
        known = self._last_fire.get(rec.key)
        return rec.applied_at if known is None else max(known, rec.applied_at)

    def _schedule(
        self,
        rec: AppliedRecord,
        state: StateStore,
        providers: Providers,
        now: datetime,
        batch: _Batch,
    ) -> datetime | None:
        """Add the schedule's due fires to `batch`; returns when it fires next."""
        fires, upcoming = fires_between(rec.spec, self._since(rec), now)
        if not fires:
            return upcoming
        self._last_fire[rec.key] = fires[-1]
        deadline = rec.spec.get("startingDeadlineSeconds")
        for t in fires[:-1]:
            why = "a later fire was due when it was found (only the latest missed fire runs late)"
            batch.records.append(self._ended(rec, t, now, "missed", why))
        last = fires[-1]
        if isinstance(deadline, int) and (now - last).total_seconds() > deadline:
            why = f"not started within startingDeadlineSeconds ({deadline}) of its time"
            batch.records.append(self._ended(rec, last, now, "missed", why))
            return upcoming
        self._fire(rec, last, state, providers, now, batch)
        return upcoming

    def _new(self, rec: AppliedRecord, fire_time: datetime, now: datetime) -> Execution:
        ex = Execution(
            new_id(now),
            rec.environment,
            str(rec.spec.get("deployment")),
            "schedule",
            "pending",
            now,
            schedule=rec.name,
            fire_time=fire_time,
        )
        ex.holder = self.holder
        ex.input = describe_input(rec.spec.get("input") or {}, self.limits)
        return ex

    def _ended(
        self, rec: AppliedRecord, fire_time: datetime, now: datetime, status: str, why: str
    ) -> Execution:
        """A fire that calls nothing, recorded as it ends (once: its fire key)."""
        ex = self._new(rec, fire_time, now)
        ex.status = status  # type: ignore[assignment]
        ex.error = why
        ex.finished_at = now
        return ex

    def _fire(
        self,
        rec: AppliedRecord,
        fire_time: datetime,
        state: StateStore,
        providers: Providers,
        now: datetime,
        batch: _Batch,
    ) -> None:
        env = rec.environment
        dep_name = str(rec.spec.get("deployment"))
        dep_key = InstanceKey(env, "Deployment", dep_name)
        if env not in self._applied:  # read once per tick, not once per schedule
            self._applied[env] = state.applied(env)
        dep = self._applied[env].get(dep_key)

        def ended(status: str, why: str) -> None:
            batch.records.append(self._ended(rec, fire_time, now, status, why))

        if dep is None:
            return ended("failed", f"deployment.{dep_name} is no longer applied in {env!r}")
        if dep.spec.get("suspended") is True or dep.spec.get("enabled") is False:
            word = "suspended" if dep.spec.get("suspended") is True else "disabled"
            return ended("skipped", f"deployment.{dep_name} is {word} in {env!r}")
        policy = rec.spec.get("concurrency") or "allow"
        if policy != "allow":
            under_way = self.executions.find(
                Query((env,), schedule=rec.name, statuses=("pending", "running"), limit=None)
            )
            if under_way and policy == "forbid":
                why = f"concurrency forbid: execution {under_way[0].id} is still running"
                return ended("skipped", why)
            for old in under_way if policy == "replace" else []:
                prior = old.status
                old.status, old.finished_at = "cancelled", now
                old.error = f"replaced by the fire at {iso(fire_time)} (concurrency replace)"
                self.executions.transition(old, (prior,))
        try:
            data = resolve_secrets(
                dict(rec.spec.get("input") or {}), self.settings.env, self.register
            )
            provider = self._provider(providers, env, dep.provider)
        except ReconcilerError as e:
            return ended("failed", e.message)
        batch.calls.append(_Call(self._new(rec, fire_time, now), provider, dep, data))
        return None

    def _done(self, future: Future[Execution]) -> None:
        """A call's own failure is recorded in its execution; an error here is the store
        failing under it (the execution then stays `running` until its process is gone or
        its deadline has passed)."""
        with self._mu:
            self._inflight -= 1
        error = future.exception()
        if error is not None:
            log.error("schedule.record_failed", error=redact(str(error)))
        elif self.observe is not None:
            self.observe(future.result())

    def _provider(self, providers: Providers, env: str, name: str) -> Provider:
        config = providers.get(env, {}).get(name)
        if config is None:
            raise ReconcilerError(
                f"provider {name!r} is not declared for {env!r} in the commit it was applied from"
            )
        key = (env, name, repr(config))
        with self._mu:
            made = self._providers.get(key)
            if made is None:
                s = self.settings
                made = make_provider(config, repo_root=s.repo, env=s.env, register=self.register)
                self._providers[key] = made
            return made

    def close(self, *, wait: bool = True) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=not wait)
        with self._mu:
            for p in self._providers.values():
                p.close()
            self._providers.clear()
        self.executions.close()
