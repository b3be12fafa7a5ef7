"""The agent's loop: per environment with a `sync` block, on its own intervals, fetch the
deploy branch, plan, gate and apply (exactly `apply`'s path, recorded with trigger
`agent`), and compare live with recorded state (healing it with `selfHeal`).

What it promises:
- Blocked, failed and drifted are *reported* once per new (commit, reasons), not at
  every pass; a blocked environment is tried again each interval, a failing one after
  a growing pause (interval × 2ⁿ, at most an hour beyond its interval).
- Another agent (or `apply`) holding an environment's lock means someone else is on
  it: skipped this pass, never an error.
- `stop()` (SIGTERM) lets the changes under way finish and be recorded, starts no
  other, ends the run `interrupted` when changes were left, and releases the lock.
- A bug or an error in one environment's pass never ends the loop.
- Environments are worked in parallel (a bounded pool of `workers`), each on its own
  schedule and back-off: one slow environment (a long readiness wait) holds up no other.
  The main thread only fetches, dispatches and keeps time.
- A state outage is not a failed change: the environment is tried again after a short
  fixed pause (`state_retry`, at most its interval), never after the doubling back-off.
- With a shard, only the shard's environments are read, planned and worked; with a
  coordinator (dynamic assignment), only those whose work key it owns right now.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler import drift as detection
from reconciler.agent.cluster import Coordinator, Shard, StateProbe, work_key
from reconciler.agent.metrics import Metrics
from reconciler.agent.notify import Notice, Notifier
from reconciler.agent.policy import Sync, notify_targets, sync_policies
from reconciler.agent.source import DeployBranch
from reconciler.engine.apply import ApplyRequest, Watchers, run_apply, run_context
from reconciler.engine.live import Providers, ProvidersOfRecord
from reconciler.errors import LockedError, ReconcilerError, StateError, StateMovedError
from reconciler.executor import ChangeResult, EnvironmentResult, RunContext
from reconciler.load import Loaded
from reconciler.log import get_logger, redact
from reconciler.session import Session
from reconciler.state.base import StateStore
from reconciler.views import agent as notices

log = get_logger("reconciler.agent")

#: When no environment has a `sync` block yet: how often to look for one.
IDLE_FETCH_S = 300.0
#: A failing environment waits at most this long beyond its interval.
MAX_BACKOFF_S = 3600.0


class AgentStopping(BaseException):
    """Raised from the progress callback once a stop was asked for: the executor starts
    no further change, lets those under way finish and be recorded, and ends the run
    `interrupted` (a BaseException, so it is not mistaken for a failure)."""


@dataclass(frozen=True)
class AgentOptions:
    #: Only these environments (default: every one with a `sync` block).
    environments: tuple[str, ...] = ()
    #: Seconds between looks at the clock: how soon a stop is noticed while idle.
    wake: float = 2.0
    #: /healthz reports the loop stalled when it showed no sign of life for this long.
    stall_after: float = 900.0
    #: Seconds before a failed fetch (or a commit that does not load) is tried again.
    retry: float = 60.0
    #: Environments worked at once.
    workers: int = 4
    #: Seconds before an environment whose pass met a state outage is tried again
    #: (at most its interval): a bounded retry, not the change back-off.
    state_retry: float = 15.0
    #: Only this shard's environments.
    shard: Shard | None = None
    #: What dynamic assignment hashes: `environment` or `account` (provider accounts).
    assign_by: str = "environment"


@dataclass(frozen=True)
class Pass:
    """What one environment's pass works from: the commit fetched when it was started."""

    commit: str | None
    loaded: Loaded | None


@dataclass
class Track:
    """One environment's schedule and what was last said about it."""

    sync: Sync
    next_sync: float = 0.0
    next_drift: float = 0.0
    failures: int = 0
    said: dict[str, Any] = field(default_factory=dict)
    last_sync_at: datetime | None = None
    blocked: list[str] | None = None
    drifted: int = 0
    #: The last pass: its outcome, and when it ended.
    last: str | None = None
    last_at: datetime | None = None
    #: What the step under way found (becomes `last` when it ends).
    result: str | None = None


class Agent:
    def __init__(
        self,
        session: Session,
        source: DeployBranch,
        *,
        notifier: Notifier,
        metrics: Metrics,
        options: AgentOptions = AgentOptions(),
        clock: Callable[[], float] = time.monotonic,
        coordinator: Coordinator | None = None,
        probe: StateProbe | None = None,
    ) -> None:
        self.session = session
        self.settings = session.settings
        self.source = source
        self.notifier = notifier
        self.metrics = metrics
        self.options = options
        self.clock = clock
        self.coordinator = coordinator
        self.probe = probe
        self.tracks: dict[str, Track] = {}
        #: The last fetched commit that loaded (what is deployed from), and the last
        #: fetched one (which may not load: never shown as the current commit).
        self.commit: str | None = None
        self.fetched: str | None = None
        self.fetch_error: str | None = None
        self.loaded: Loaded | None = None
        self._of_record = ProvidersOfRecord(session)
        self.next_fetch = 0.0
        self.busy: set[str] = set()
        self.heartbeat = clock()
        self.running = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._mu = threading.Lock()
        self._said: dict[str, Any] = {}
        self._pool: ThreadPoolExecutor | None = None

    # -- driving ---------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Look at the schedule now (membership or readiness changed, a pass ended)."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Pass after pass until `stop()`."""
        self.running = True
        self._pool = ThreadPoolExecutor(max(1, self.options.workers), thread_name_prefix="env")
        try:
            while not self.stopping:
                self.beat()
                try:
                    self.tick()
                except Exception as e:  # a bug must not end it
                    log.exception("internal error in a pass", error=redact(str(e)))
                    self.next_fetch = self.clock() + self.options.retry
                self._wake.wait(self._sleep_for())
                self._wake.clear()
        finally:
            self._pool.shutdown(wait=True)  # the passes under way see `stopping`
            self.running = False

    def beat(self) -> None:
        self.heartbeat = self.clock()

    def _sleep_for(self) -> float:
        dues = [self.next_fetch]
        if len(self.busy) >= self.options.workers:  # a pass ending wakes the loop
            return max(0.0, min(self.next_fetch - self.clock(), self.options.wake))
        mine = self.owned()
        for env, t in self.tracks.items():
            if env not in mine or env in self.busy:
                continue
            if t.sync.auto:
                dues.append(t.next_sync)
            dues.append(t.next_drift)
        return max(0.0, min(min(dues) - self.clock(), self.options.wake))

    def owned(self) -> set[str]:
        """The tracked environments this agent works now (all of them without dynamic
        assignment)."""
        if self.coordinator is None:
            return set(self.tracks)
        if self.loaded is None:
            return set()
        loaded = self.loaded
        keys = {e: work_key(loaded.desired, e, self.options.assign_by) for e in self.tracks}
        return self.coordinator.owns(keys)

    # -- one pass --------------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock()
        mine = self.owned()
        fetched = True
        free = self.options.workers - len(self.busy)
        if now >= self.next_fetch or (free > 0 and self._due(now, mine, syncs=True)):
            fetched = self._fetch(now)
            mine = self.owned()
        work = self._due(now, mine, syncs=fetched) + self._due(now, mine, syncs=False)
        current = Pass(self.commit, self.loaded)
        # Only as many as there are free workers, the longest overdue first: a pass is
        # started with the newest commit and the current assignment, never queued on
        # a stale one.
        work = sorted({t.sync.environment: t for t in work}.values(), key=self._due_at)
        for t in work[: max(0, free)]:
            if self.stopping:
                return
            self._dispatch(t, current, now)

    def _due(self, now: float, mine: set[str], *, syncs: bool) -> list[Track]:
        return [
            t
            for env, t in self.tracks.items()
            if env in mine
            and env not in self.busy
            and ((t.sync.auto and t.next_sync <= now) if syncs else t.next_drift <= now)
        ]

    @staticmethod
    def _due_at(t: Track) -> float:
        return min(t.next_sync if t.sync.auto else t.next_drift, t.next_drift)

    def _dispatch(self, t: Track, current: Pass, now: float) -> None:
        """One environment's pass (sync when due, then drift when due) on the pool."""
        env = t.sync.environment
        do_sync = t.sync.auto and t.next_sync <= now and current.commit is not None
        do_drift = t.next_drift <= now
        if not (do_sync or do_drift) or self._pool is None:
            return
        with self._mu:
            self.busy.add(env)
        try:
            self._pool.submit(self._pass, t, current, do_sync, do_drift)
        except RuntimeError:  # the pool is shutting down: the agent is stopping
            with self._mu:
                self.busy.discard(env)

    def _pass(self, t: Track, current: Pass, do_sync: bool, do_drift: bool) -> None:
        env = t.sync.environment
        try:
            if do_sync:
                self._guarded(t, "agent", lambda t: self._sync(t, current), current)
            if do_drift and not self.stopping:
                self._guarded(t, "heal", lambda t: self._drift(t, current), current)
        finally:
            with self._mu:
                self.busy.discard(env)
            self._wake.set()

    def _guarded(
        self, t: Track, trigger: str, step: Callable[[Track], None], current: Pass
    ) -> None:
        """One environment's step; whatever goes wrong stays with that environment."""
        env = t.sync.environment
        began = datetime.now(UTC)
        outcome = "error"
        t.result = None
        try:
            step(t)
            outcome = t.result or "ok"
        except AgentStopping:
            outcome = "interrupted"
            self.metrics.runs.labels(env, trigger, "interrupted").inc()
            log.warning("stopped mid-run: the run is recorded as interrupted", environment=env)
        except (LockedError, StateMovedError) as e:
            outcome = "locked"
            self.metrics.runs.labels(env, trigger, "locked").inc()
            log.info("someone else is on it", environment=env, detail=redact(e.message))
        except StateError as e:
            outcome = self._after_error(t, trigger, began, e.message, current, state=True)
        except ReconcilerError as e:
            outcome = self._after_error(t, trigger, began, e.message, current, state=False)
        except Exception as e:  # a bug must not end the loop
            log.exception("internal error", environment=env, error=redact(f"{e}"))
            message = f"internal error: {type(e).__name__}: {e}"
            outcome = self._after_error(t, trigger, began, message, current, state=False)
        finally:
            t.last, t.last_at = outcome, datetime.now(UTC)
            self.beat()

    def _after_error(
        self,
        t: Track,
        trigger: str,
        began: datetime,
        message: str,
        current: Pass,
        *,
        state: bool,
    ) -> str:
        """A step raised: count it as the run history has it (`failed` when a run was
        recorded and ended so, `error` when none was), say so naming the run, and
        schedule the next try (the state's own short retry after a state outage)."""
        env = t.sync.environment
        run = self._recorded_run(env, began)
        outcome = run.outcome if run is not None and run.outcome != "running" else "error"
        self.metrics.runs.labels(env, run.trigger if run else trigger, outcome).inc()
        if state:
            retry = min(t.sync.interval, self.options.state_retry)
            with self._mu:
                t.next_sync = self.clock() + retry
                t.next_drift = min(t.next_drift, self.clock() + retry)
            if run is None:
                key = ("state", message)
                if t.said.get("state") != key:
                    t.said["state"] = key
                    log.error(
                        "the state failed during the pass: trying again shortly",
                        environment=env,
                        retry=retry,
                        error=redact(message),
                    )
                return outcome
        self._failed(
            t,
            message,
            run_id=run.id if run is not None else None,
            commit=current.commit,
            backoff=trigger == "agent" and not state,
        )
        return outcome

    def _recorded_run(self, env: str, began: datetime) -> Any:
        """The run this process recorded for `env` since `began`, if it can be read: the
        environment's lock was ours meanwhile, so no other run can have begun then."""
        try:
            with self.session.open_store(read_only=True) as store:
                found = [r for r in store.runs(env, limit=5) if r.started_at >= began]
        except ReconcilerError:
            return None
        return found[-1] if found else None  # the earliest: newest come first

    # -- the deploy branch -------------------------------------------------------------

    def _fetch(self, now: float) -> bool:
        """Fetch the deploy branch and load its commit; False when either failed (said
        once per problem; tried again after `retry` seconds or the shortest interval).
        Drift checks go on meanwhile with the last commit that loaded."""
        try:
            sha = self.source.fetch()
        except ReconcilerError as e:
            self.metrics.fetches.labels("failed").inc()
            self.fetch_error = e.message
            self._commit_problem("fetch", e, now, self.fetched)
            return False
        self._said.pop("fetch", None)
        self.fetched = sha
        if self.loaded is None or self.loaded.commit != sha:
            try:
                loaded = self.session.load(sha)
            except ReconcilerError as e:
                self.metrics.fetches.labels("invalid").inc()
                self.fetch_error = f"{sha[:12]} does not load: {e.message}"
                self._commit_problem("load", e, now, sha)
                return False
            self.loaded = loaded
            self._said.pop("load", None)
        self.commit = sha
        self.fetch_error = None
        self.metrics.fetches.labels("ok").inc()
        self._update_tracks(self.loaded, now)
        intervals = [t.sync.interval for t in self.tracks.values()]
        self.next_fetch = now + (min(intervals) if intervals else IDLE_FETCH_S)
        return True

    def _commit_problem(self, what: str, e: ReconcilerError, now: float, sha: str | None) -> None:
        message = e.message + (f"\n{e.details}" if e.details else "")
        delay = min([self.options.retry, *(t.sync.interval for t in self.tracks.values())])
        self.next_fetch = now + delay
        with self._mu:
            for t in self.tracks.values():
                t.next_sync = max(t.next_sync, now + t.sync.interval)
        key = (sha, message)
        if self._said.get(what) == key:
            return
        self._said[what] = key
        log.error(f"cannot {what} the deploy branch", commit=sha, error=redact(message))
        if what == "load":
            text = f"the manifests at {(sha or '')[:12]} do not load: {message}"
            mine = self.owned()
            for env, t in self.tracks.items():  # _tell copes with an unreachable state
                if env in mine:
                    self._tell(None, env, notices.failed(env, text, commit=sha, run_id=None))
                    t.said["failed"] = (sha, text)

    def _update_tracks(self, loaded: Loaded, now: float) -> None:
        policies = sync_policies(loaded.desired)
        if self.options.environments:
            policies = {e: p for e, p in policies.items() if e in self.options.environments}
        shard = self.options.shard
        if shard is not None:
            policies = {e: p for e, p in policies.items() if shard.selects(loaded.desired, e)}
        for env in list(self.tracks):
            if env in self.busy and env not in policies:
                continue  # its pass under way ends first
            if env not in policies:
                del self.tracks[env]
                self.metrics.set_blocked(env, False)
                log.info("environment no longer synced", environment=env)
        for env, pol in policies.items():
            t = self.tracks.get(env)
            if t is None:
                self.tracks[env] = Track(pol, next_sync=now, next_drift=now)
                log.info(
                    "syncing environment",
                    environment=env,
                    auto=pol.auto,
                    interval=pol.interval,
                    self_heal=pol.self_heal,
                )
            elif t.sync != pol:
                t.sync = pol
                t.next_sync = min(t.next_sync, now + pol.interval)
                t.next_drift = min(t.next_drift, now + pol.drift_interval)

    # -- sync: plan, gate, apply -------------------------------------------------------

    def _sync(self, t: Track, current: Pass) -> None:
        env = t.sync.environment
        commit = current.commit
        with self._mu:
            t.next_sync = self.clock() + t.sync.interval
        self.metrics.checks.labels(env).inc()
        log.debug("sync check", environment=env, commit=commit)
        request = ApplyRequest(
            environments=(env,),
            commit=commit,
            trigger="agent",
            loaded=current.loaded,
            watchers=Watchers(self._progress),
            trigger_context=self._context,
        )
        started = self.clock()
        with self.session.open_store() as store:
            report = run_apply(self.session, store, request)
            result = report.results[0]
            trigger = self._trigger(store, result)
            self._count(env, trigger, result, self.clock() - started)
            t.result = result.outcome
            t.said.pop("state", None)
            if result.outcome == "blocked":
                gate = report.gates.get(env)
                reasons = gate.reasons if gate else [result.message or "refused"]
                self._blocked(t, store, reasons, current)
            elif result.outcome == "failed":
                message = result.message or "failed"
                self._failed(t, message, run_id=result.run_id, store=store, commit=commit)
            else:
                if result.outcome == "applied":
                    subject = self.session.repo.subject(commit or "HEAD")
                    notice = notices.applied(
                        env, result, commit=commit, subject=subject, trigger=trigger
                    )
                    self._tell(store, env, notice, current.loaded)
                    log.info("applied", environment=env, run=result.run_id, commit=commit)
                self._in_sync(t, commit)

    def _context(self, loaded: Loaded) -> RunContext:
        """`apply`'s run context (a revert is a rollback), and who applied it."""
        ctx = run_context(self.session, loaded)
        ctx.details["agent"] = True
        return ctx

    def _progress(self, res: ChangeResult) -> None:
        self.beat()
        if self.stopping:
            raise AgentStopping("the agent was stopped (SIGTERM): no further change started")

    def _trigger(self, store: StateStore, result: EnvironmentResult) -> str:
        if result.run_id is None:
            return "agent"
        run = store.run(result.run_id)
        return run.trigger if run is not None else "agent"

    def _count(self, env: str, trigger: str, result: EnvironmentResult, seconds: float) -> None:
        self.metrics.runs.labels(env, trigger, result.outcome).inc()
        for r in result.results:
            self.metrics.changes.labels(env, r.change.action, r.outcome).inc()
        if result.run_id is not None:
            self.metrics.duration.labels(env, trigger).observe(seconds)

    def _in_sync(self, t: Track, commit: str | None) -> None:
        env = t.sync.environment
        t.failures = 0
        t.last_sync_at = datetime.now(UTC)
        self.metrics.last_sync.labels(env).set(t.last_sync_at.timestamp())
        if t.blocked is not None:
            log.info("no longer blocked", environment=env, commit=commit)
        t.blocked = None
        self.metrics.set_blocked(env, False)
        t.said.pop("blocked", None)
        t.said.pop("failed", None)

    def _blocked(self, t: Track, store: StateStore, reasons: list[str], current: Pass) -> None:
        env = t.sync.environment
        t.blocked = reasons
        self.metrics.set_blocked(env, True)
        key = (current.commit, tuple(reasons))
        if t.said.get("blocked") == key:
            return
        t.said["blocked"] = key
        log.warning("blocked", environment=env, commit=current.commit, reasons=reasons)
        notice = notices.blocked(env, commit=current.commit, reasons=reasons)
        self._tell(store, env, notice, current.loaded)

    def _failed(
        self,
        t: Track,
        message: str,
        *,
        run_id: str | None,
        commit: str | None,
        store: StateStore | None = None,
        backoff: bool = True,
    ) -> None:
        """Said once per (commit, message); synced again after a growing pause."""
        env = t.sync.environment
        if backoff:
            t.failures += 1
            pause = min(t.sync.interval * 2 ** (t.failures - 1), t.sync.interval + MAX_BACKOFF_S)
            with self._mu:
                t.next_sync = max(t.next_sync, self.clock() + pause)
        key = (commit, message)
        if t.said.get("failed") == key:
            return
        t.said["failed"] = key
        named = {"run": run_id} if run_id else {}
        log.error("failed", environment=env, commit=commit, **named, error=redact(message))
        self._tell(store, env, notices.failed(env, message, commit=commit, run_id=run_id))

    # -- drift and heal ------------------------------------------------------------------

    def _drift(self, t: Track, current: Pass) -> None:
        env = t.sync.environment
        with self._mu:
            t.next_drift = self.clock() + t.sync.drift_interval
        if current.loaded is None:
            return
        with self.session.open_store() as store:
            try:  # where the recorded objects were written: see ProvidersOfRecord
                providers = self._of_record.get(store, current.loaded, environments=[env])
            except ReconcilerError as e:
                message = f"cannot load the commit it was applied from: {e.message}"
                commit = current.commit
                self._failed(t, message, run_id=None, store=store, commit=commit, backoff=False)
                return
            if env not in providers:
                return  # never applied from a commit: no recorded object to compare
            found = detection.detect_drift(
                store,
                providers,
                repo_root=self.settings.repo,
                env=self.settings.env,
                register=self.session.redactor.add,
                environments=[env],
                parallelism=self.settings.parallelism,
            )
            self.metrics.drift_checks.labels(env).inc()
            items = found.environments.get(env, [])
            self._unreadable(t, [i for i in items if i.status == "unreadable"])
            drifted = [i for i in items if i.status in ("drifted", "missing")]
            t.drifted = len(drifted)
            t.result = "drifted" if drifted else "in-sync"
            self.metrics.drifted.labels(env).set(len(drifted))
            if not drifted:
                t.said.pop("drifted", None)
                return
            key = tuple((i.address, i.status, tuple(d.path for d in i.diff)) for i in drifted)
            if t.said.get("drifted") != key:
                t.said["drifted"] = key
                log.warning("drifted", environment=env, instances=[i.address for i in drifted])
                notice = notices.drifted(env, drifted, self_heal=t.sync.self_heal)
                self._tell(store, env, notice, current.loaded)
            if t.sync.self_heal:
                serials = {env: found.serials[env]}
                report = detection.DriftReport({env: drifted}, serials)
                self._heal(t, store, report, providers, current)

    def _heal(
        self,
        t: Track,
        store: StateStore,
        report: detection.DriftReport,
        providers: Providers,
        current: Pass,
    ) -> None:
        env = t.sync.environment
        started = self.clock()
        results = detection.heal(
            store,
            report,
            providers,
            repo_root=self.settings.repo,
            env=self.settings.env,
            register=self.session.redactor.add,
            parallelism=self.settings.parallelism,
            progress=self._progress,
        )
        for result in results:
            self._count(env, "heal", result, self.clock() - started)
            if result.outcome == "applied":
                t.drifted = 0
                self.metrics.drifted.labels(env).set(0)
                t.said.pop("drifted", None)
                t.result = "healed"
                log.info("healed", environment=env, run=result.run_id)
                self._tell(store, env, notices.healed(env, result), current.loaded)
            elif result.outcome == "failed":
                t.result = "failed"
                message = f"healing failed: {result.message}"
                self._failed(
                    t,
                    message,
                    run_id=result.run_id,
                    store=store,
                    commit=current.commit,
                    backoff=False,
                )

    def _unreadable(self, t: Track, items: list[detection.DriftItem]) -> None:
        key = tuple((i.address, i.error) for i in items)
        if not items or t.said.get("unreadable") == key:
            return
        t.said["unreadable"] = key
        for i in items:
            log.warning("cannot read live state", instance=i.address, error=redact(i.error or ""))

    # -- telling -----------------------------------------------------------------------

    def _tell(
        self, store: StateStore | None, env: str, notice: Notice, loaded: Loaded | None = None
    ) -> None:
        """Queue `notice` for the environment's targets (the recorded policy's too, read
        from `store`, or from a store opened here)."""
        self.metrics.notices.labels(env, notice.event).inc()
        loaded = loaded or self.loaded
        desired = loaded.desired if loaded is not None else None
        if store is not None:
            self.notifier.send(notice, notify_targets(store, desired, env))
            return
        try:
            with self.session.open_store() as own:
                self.notifier.send(notice, notify_targets(own, desired, env))
        except ReconcilerError:  # the state is unreachable: the commit's targets still hear
            targets = desired.policy(env).notify if desired and env in desired.environments else []
            self.notifier.send(notice, targets)

    # -- /healthz and /readyz ---------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        """Liveness: the loop runs and keeps time (whatever the state or the forge do)."""
        age = self.clock() - self.heartbeat
        if self.stopping:
            status = "stopping"
        elif not self.running:
            status = "stopped"
        elif age > self.options.stall_after:
            status = "stalled"
        else:
            status = "ok"
        doc = {
            "status": status,
            "heartbeatAgeSeconds": round(age, 1),
            "busy": sorted(self.busy),
            "commit": self.commit,
            "environments": {
                env: {
                    "auto": t.sync.auto,
                    "selfHeal": t.sync.self_heal,
                    "blocked": t.blocked is not None,
                    "drifted": t.drifted,
                    "lastSync": t.last_sync_at.isoformat() if t.last_sync_at else None,
                }
                for env, t in list(self.tracks.items())
            },
        }
        return (200 if status == "ok" else 503), doc

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """Readiness: alive, the state answers (as last probed), and the deploy branch
        was fetched and loaded; with the last pass of each environment."""
        live, _ = self.health()
        probe = self.probe
        state_ok = probe.ok is True if probe is not None else True
        state: dict[str, Any] = {"ok": state_ok}
        if probe is not None:
            state["error"] = probe.error
            state["checkedAt"] = probe.checked_at.isoformat() if probe.checked_at else None
        forge = {
            "ok": self.fetch_error is None and self.commit is not None,
            "commit": self.commit,
            "fetched": self.fetched,
            "error": self.fetch_error,
        }
        mine = self.owned()
        envs = {
            env: {
                "owned": env in mine,
                "busy": env in self.busy,
                "lastPass": t.last,
                "lastPassAt": t.last_at.isoformat() if t.last_at else None,
                "blocked": t.blocked is not None,
                "failures": t.failures,
            }
            for env, t in list(self.tracks.items())
        }
        ready = live == 200 and state_ok and bool(forge["ok"])
        doc: dict[str, Any] = {
            "status": "ready" if ready else "unready",
            "state": state,
            "forge": forge,
            "environments": envs,
        }
        if self.options.shard is not None:
            doc["shard"] = str(self.options.shard)
        c = self.coordinator
        if c is not None:
            doc["members"] = {
                "me": c.name,
                "live": list(c.members),
                "healthy": c.healthy,
                "duties": sorted(c.duties),
            }
        return (200 if ready else 503), doc
