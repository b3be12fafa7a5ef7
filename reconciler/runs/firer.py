"""The firing engine on a thread of its own, beside a long-running process's loop
(`reconciler agent`): it looks at the clock at least every `wake` seconds, and sleeps
no later than the next fire, so a fire starts within a moment of its time."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from reconciler.engine.live import ProvidersOfRecord
from reconciler.log import get_logger, redact
from reconciler.runs.fire import Clock, FireEngine, utc_now
from reconciler.runs.prom import ExecutionMetrics
from reconciler.runs.store import ExecutionStore, reap
from reconciler.session import Session
from reconciler.state import open_state
from reconciler.state.base import StateStore

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = get_logger("reconciler.fire")
#: How often (by the firer's clock) executions abandoned by dead holders are looked for.
REAP_EVERY = timedelta(minutes=1)


class Firer:
    def __init__(
        self,
        session: Session,
        *,
        environments: tuple[str, ...] = (),
        clock: Clock = utc_now,
        wake: float = 1.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.session = session
        self.settings = session.settings
        self.environments = environments
        self.clock = clock
        self.wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fire", daemon=True)
        self._engine: FireEngine | None = None
        self._of_record = ProvidersOfRecord(session)
        #: Executions on the agent's /metrics, when it gives its registry.
        self.metrics = None if registry is None else ExecutionMetrics(registry)
        self._state: StateStore | None = None
        self._reaped: datetime | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60) -> None:
        """Fire nothing more; wait for the calls under way to be recorded."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        s = self.settings
        executions = open_until_stopped(self.session, self._stop, "fire.cannot_start")
        if executions is None:
            return
        observe = None if self.metrics is None else self.metrics.observe
        engine = FireEngine(
            s,
            executions,
            environments=self.environments,
            clock=self.clock,
            observe=observe,
            register=self.session.redactor.add,
        )
        self._engine = engine
        try:
            while not self._stop.is_set():
                now = self.clock()
                try:
                    self._tick(engine, now)
                except Exception as e:  # a bug or the database gone must not end firing
                    log.exception("fire.error", error=redact(str(e)))
                    self._close_state()
                self._stop.wait(self._sleep_for(engine, self.clock()))
        finally:
            self._close_state()
            engine.close(wait=True)

    def _tick(self, engine: FireEngine, now: datetime) -> None:
        """One tick on a state store kept open between ticks (a fire should not wait for
        a connection); one that has nothing yet is opened again, since a read-only SQLite
        store opened before the file existed would never see it."""
        s = self.settings
        if self._state is None or not self._state.environments():
            self._close_state()
            self._state = open_state(s.state_url, repo_root=s.repo, env=s.env, read_only=True)
        engine.tick(self._state, self._of_record.get(self._state), now)
        if self._reaped is None or now - self._reaped >= REAP_EVERY:
            # an execution abandoned on another machine (its agent killed) is said so
            reap(engine.executions, now)
            self._reaped = now

    def _close_state(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None

    def _sleep_for(self, engine: FireEngine, now: datetime) -> float:
        due = engine.next_due()
        if due is None:
            return self.wake
        return max(0.0, min(self.wake, (due - now).total_seconds()))


#: Seconds between attempts to open the executions while the state is unreachable.
OPEN_RETRY = 5.0


def open_until_stopped(
    session: Session, stop: threading.Event, event: str, *, every: float = OPEN_RETRY
) -> ExecutionStore | None:
    """The executions, opened again every `every` seconds while the state cannot be
    reached (an agent started during a database outage fires once it is back), or None
    once `stop` is set."""
    while not stop.is_set():
        try:
            return session.open_executions()
        except Exception as e:  # the state unreachable: the agent's loop says so too
            log.error(event, error=redact(str(e)), retry_in=every)
            stop.wait(every)
    return None
