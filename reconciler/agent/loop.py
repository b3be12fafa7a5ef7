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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler import drift as detection
from reconciler.agent.metrics import Metrics
from reconciler.agent.notify import Notice, Notifier
from reconciler.agent.policy import Sync, notify_targets, sync_policies
from reconciler.agent.source import DeployBranch
from reconciler.commands.apply import ApplyOptions, run_apply, run_context
from reconciler.commands.context import manifest_repo, open_store, secret_env
from reconciler.commands.live import Providers, ProvidersOfRecord
from reconciler.config import Settings
from reconciler.errors import LockedError, ReconcilerError, StateMovedError
from reconciler.executor import ChangeResult, EnvironmentResult, RunContext
from reconciler.load import Loaded, load
from reconciler.log import get_logger, redact
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


class Agent:
    def __init__(
        self,
        settings: Settings,
        source: DeployBranch,
        *,
        notifier: Notifier,
        metrics: Metrics,
        options: AgentOptions = AgentOptions(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.source = source
        self.notifier = notifier
        self.metrics = metrics
        self.options = options
        self.clock = clock
        self.tracks: dict[str, Track] = {}
        self.commit: str | None = None
        self.loaded: Loaded | None = None
        self._of_record = ProvidersOfRecord(settings)
        self.next_fetch = 0.0
        self.busy: str | None = None
        self.heartbeat = clock()
        self.running = False
        self._stop = threading.Event()
        self._said: dict[str, Any] = {}

    # -- driving ---------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Pass after pass until `stop()`."""
        self.running = True
        try:
            while not self.stopping:
                self.beat()
                try:
                    self.tick()
                except Exception as e:  # a bug (or the state's database gone) must not end it
                    log.exception("internal error in a pass", error=redact(str(e)))
                    self.next_fetch = self.clock() + self.options.retry
                self._stop.wait(self._sleep_for())
        finally:
            self.running = False

    def beat(self) -> None:
        self.heartbeat = self.clock()

    def _sleep_for(self) -> float:
        dues = [self.next_fetch]
        for t in self.tracks.values():
            if t.sync.auto:
                dues.append(t.next_sync)
            dues.append(t.next_drift)
        return max(0.0, min(min(dues) - self.clock(), self.options.wake))

    # -- one pass --------------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock()
        fetched = True
        if now >= self.next_fetch or self._due_syncs(now):
            fetched = self._fetch(now)
        for t in self._due_syncs(now) if fetched else []:
            if self.stopping:
                return
            self._guarded(t, "agent", self._sync)
        for t in [t for t in self.tracks.values() if t.next_drift <= now]:
            if self.stopping:
                return
            self._guarded(t, "heal", self._drift)

    def _due_syncs(self, now: float) -> list[Track]:
        return [t for t in self.tracks.values() if t.sync.auto and t.next_sync <= now]

    def _guarded(self, t: Track, trigger: str, step: Callable[[Track], None]) -> None:
        """One environment's step; whatever goes wrong stays with that environment."""
        env = t.sync.environment
        self.busy = env
        try:
            step(t)
        except AgentStopping:
            self.metrics.runs.labels(env, trigger, "interrupted").inc()
            log.warning("stopped mid-run: the run is recorded as interrupted", environment=env)
        except (LockedError, StateMovedError) as e:
            self.metrics.runs.labels(env, trigger, "locked").inc()
            log.info("someone else is on it", environment=env, detail=redact(e.message))
        except ReconcilerError as e:
            self.metrics.runs.labels(env, trigger, "error").inc()
            self._failed(t, e.message, run_id=None, backoff=trigger == "agent")
        except Exception as e:  # a bug must not end the loop
            self.metrics.runs.labels(env, trigger, "error").inc()
            log.exception("internal error", environment=env, error=redact(f"{e}"))
            message = f"internal error: {type(e).__name__}: {e}"
            self._failed(t, message, run_id=None, backoff=trigger == "agent")
        finally:
            self.busy = None
            self.beat()

    # -- the deploy branch -------------------------------------------------------------

    def _fetch(self, now: float) -> bool:
        """Fetch the deploy branch and load its commit; False when either failed (said
        once per problem; tried again after `retry` seconds or the shortest interval).
        Drift checks go on meanwhile with the last commit that loaded."""
        try:
            sha = self.source.fetch()
        except ReconcilerError as e:
            self.metrics.fetches.labels("failed").inc()
            self._commit_problem("fetch", e, now)
            return False
        self._said.pop("fetch", None)
        self.commit = sha
        if self.loaded is None or self.loaded.commit != sha:
            try:
                loaded = load(self.settings, sha)
            except ReconcilerError as e:
                self.metrics.fetches.labels("invalid").inc()
                self._commit_problem("load", e, now)
                return False
            secret_env(self.settings, loaded.desired)
            self.loaded = loaded
            self._said.pop("load", None)
        self.metrics.fetches.labels("ok").inc()
        self._update_tracks(self.loaded, now)
        intervals = [t.sync.interval for t in self.tracks.values()]
        self.next_fetch = now + (min(intervals) if intervals else IDLE_FETCH_S)
        return True

    def _commit_problem(self, what: str, e: ReconcilerError, now: float) -> None:
        message = e.message + (f"\n{e.details}" if e.details else "")
        delay = min([self.options.retry, *(t.sync.interval for t in self.tracks.values())])
        self.next_fetch = now + delay
        for t in self.tracks.values():
            t.next_sync = max(t.next_sync, now + t.sync.interval)
        key = (self.commit, message)
        if self._said.get(what) == key:
            return
        self._said[what] = key
        log.error(f"cannot {what} the deploy branch", commit=self.commit, error=redact(message))
        if what == "load":
            text = f"the manifests at {(self.commit or '')[:12]} do not load: {message}"
            for env, t in self.tracks.items():  # _tell copes with an unreachable state
                self._tell(None, env, notices.failed(env, text, commit=self.commit, run_id=None))
                t.said["failed"] = (self.commit, text)

    def _update_tracks(self, loaded: Loaded, now: float) -> None:
        policies = sync_policies(loaded.desired)
        if self.options.environments:
            policies = {e: p for e, p in policies.items() if e in self.options.environments}
        for env in list(self.tracks):
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

    def _sync(self, t: Track) -> None:
        env = t.sync.environment
        t.next_sync = self.clock() + t.sync.interval
        self.metrics.checks.labels(env).inc()
        log.debug("sync check", environment=env, commit=self.commit)
        opts = ApplyOptions(environments=(env,), commit=self.commit, trigger="agent")
        started = self.clock()
        with open_store(self.settings) as store:
            report = run_apply(
                self.settings, store, opts, progress=self._progress, trigger_context=self._context
            )
            result = report.results[0]
            trigger = self._trigger(store, result)
            self._count(env, trigger, result, self.clock() - started)
            if result.outcome == "blocked":
                gate = report.gates.get(env)
                self._blocked(t, store, gate.reasons if gate else [result.message or "refused"])
            elif result.outcome == "failed":
                self._failed(t, result.message or "failed", run_id=result.run_id, store=store)
            else:
                if result.outcome == "applied":
                    subject = manifest_repo(self.settings).subject(self.commit or "HEAD")
                    notice = notices.applied(
                        env, result, commit=self.commit, subject=subject, trigger=trigger
                    )
                    self._tell(store, env, notice)
                    log.info("applied", environment=env, run=result.run_id, commit=self.commit)
                self._in_sync(t)

    def _context(self, loaded: Loaded) -> RunContext:
        """`apply`'s run context (a revert is a rollback), and who applied it."""
        ctx = run_context(self.settings, loaded)
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

    def _in_sync(self, t: Track) -> None:
        env = t.sync.environment
        t.failures = 0
        t.last_sync_at = datetime.now(UTC)
        self.metrics.last_sync.labels(env).set(t.last_sync_at.timestamp())
        if t.blocked is not None:
            log.info("no longer blocked", environment=env, commit=self.commit)
        t.blocked = None
        self.metrics.set_blocked(env, False)
        t.said.pop("blocked", None)
        t.said.pop("failed", None)

    def _blocked(self, t: Track, store: StateStore, reasons: list[str]) -> None:
        env = t.sync.environment
        t.blocked = reasons
        self.metrics.set_blocked(env, True)
        key = (self.commit, tuple(reasons))
        if t.said.get("blocked") == key:
            return
        t.said["blocked"] = key
        log.warning("blocked", environment=env, commit=self.commit, reasons=reasons)
        self._tell(store, env, notices.blocked(env, commit=self.commit, reasons=reasons))

    def _failed(
        self,
        t: Track,
        message: str,
        *,
        run_id: str | None,
        store: StateStore | None = None,
        backoff: bool = True,
    ) -> None:
        """Said once per (commit, message); synced again after a growing pause."""
        env = t.sync.environment
        if backoff:
            t.failures += 1
            pause = min(t.sync.interval * 2 ** (t.failures - 1), t.sync.interval + MAX_BACKOFF_S)
            t.next_sync = max(t.next_sync, self.clock() + pause)
        key = (self.commit, message)
        if t.said.get("failed") == key:
            return
        t.said["failed"] = key
        log.error("failed", environment=env, commit=self.commit, run=run_id, error=redact(message))
        self._tell(store, env, notices.failed(env, message, commit=self.commit, run_id=run_id))

    # -- drift and heal ------------------------------------------------------------------

    def _drift(self, t: Track) -> None:
        env = t.sync.environment
        t.next_drift = self.clock() + t.sync.drift_interval
        if self.loaded is None:
            return
        with open_store(self.settings) as store:
            try:  # where the recorded objects were written: see ProvidersOfRecord
                providers = self._of_record.get(store, self.loaded)
            except ReconcilerError as e:
                message = f"cannot load the commit it was applied from: {e.message}"
                self._failed(t, message, run_id=None, store=store, backoff=False)
                return
            if env not in providers:
                return  # never applied from a commit: no recorded object to compare
            found = detection.detect_drift(
                store,
                providers,
                repo_root=self.settings.repo,
                env=self.settings.env,
                environments=[env],
            )
            self.metrics.drift_checks.labels(env).inc()
            items = found.environments.get(env, [])
            self._unreadable(t, [i for i in items if i.status == "unreadable"])
            drifted = [i for i in items if i.status in ("drifted", "missing")]
            t.drifted = len(drifted)
            self.metrics.drifted.labels(env).set(len(drifted))
            if not drifted:
                t.said.pop("drifted", None)
                return
            key = tuple((i.address, i.status, tuple(d.path for d in i.diff)) for i in drifted)
            if t.said.get("drifted") != key:
                t.said["drifted"] = key
                log.warning("drifted", environment=env, instances=[i.address for i in drifted])
                self._tell(store, env, notices.drifted(env, drifted, self_heal=t.sync.self_heal))
            if t.sync.self_heal:
                serials = {env: found.serials[env]}
                self._heal(t, store, detection.DriftReport({env: drifted}, serials), providers)

    def _heal(
        self, t: Track, store: StateStore, report: detection.DriftReport, providers: Providers
    ) -> None:
        env = t.sync.environment
        started = self.clock()
        results = detection.heal(
            store,
            report,
            providers,
            repo_root=self.settings.repo,
            env=self.settings.env,
            parallelism=self.settings.parallelism,
            progress=self._progress,
        )
        for result in results:
            self._count(env, "heal", result, self.clock() - started)
            if result.outcome == "applied":
                t.drifted = 0
                self.metrics.drifted.labels(env).set(0)
                t.said.pop("drifted", None)
                log.info("healed", environment=env, run=result.run_id)
                self._tell(store, env, notices.healed(env, result))
            elif result.outcome == "failed":
                message = f"healing failed: {result.message}"
                self._failed(t, message, run_id=result.run_id, store=store, backoff=False)

    def _unreadable(self, t: Track, items: list[detection.DriftItem]) -> None:
        key = tuple((i.address, i.error) for i in items)
        if not items or t.said.get("unreadable") == key:
            return
        t.said["unreadable"] = key
        for i in items:
            log.warning("cannot read live state", instance=i.address, error=redact(i.error or ""))

    # -- telling -----------------------------------------------------------------------

    def _tell(self, store: StateStore | None, env: str, notice: Notice) -> None:
        """Queue `notice` for the environment's targets (the recorded policy's too, read
        from `store`, or from a store opened here)."""
        self.metrics.notices.labels(env, notice.event).inc()
        desired = self.loaded.desired if self.loaded is not None else None
        if store is not None:
            self.notifier.send(notice, notify_targets(store, desired, env))
            return
        try:
            with open_store(self.settings) as own:
                self.notifier.send(notice, notify_targets(own, desired, env))
        except ReconcilerError:  # the state is unreachable: the commit's targets still hear
            targets = desired.policy(env).notify if desired and env in desired.environments else []
            self.notifier.send(notice, targets)

    # -- /healthz ----------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
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
            "busy": self.busy,
            "commit": self.commit,
            "environments": {
                env: {
                    "auto": t.sync.auto,
                    "selfHeal": t.sync.self_heal,
                    "blocked": t.blocked is not None,
                    "drifted": t.drifted,
                    "lastSync": t.last_sync_at.isoformat() if t.last_sync_at else None,
                }
                for env, t in self.tracks.items()
            },
        }
        return (200 if status == "ok" else 503), doc
