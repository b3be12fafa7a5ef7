"""Waiting for a written object to become Healthy.

A waiting change holds neither a worker nor a provider slot: it is a `Waiting`, due
again at a time, that a worker polls (`Waits.poll`, one provider call under a slot).
Healthy or Suspended settles it applied; Degraded or Missing fails it; so do its
readiness timeout and the run deadline, whichever comes first. A provider's
Retry-After stretches the next poll (capped at `RETRY_AFTER_CAP`) unless that would
pass the timeout, which then fails the change at once.

A restore's write waits the same way, with its own wording (`restored, then ...`): it
is recorded the moment it is written, so its wait records nothing more, and the run
deadline does not cut it short (putting back matters more)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from reconciler.clock import Clock
from reconciler.log import get_logger
from reconciler.plan import Change
from reconciler.providers.base import HealthStatus, Provider, RetryAfter
from reconciler.providers.pool import ProviderPool
from reconciler.state.base import StateStore
from reconciler.vocabulary import READY

from .model import (
    RETRY_AFTER_CAP,
    ChangeResult,
    HealthEvent,
    HealthFn,
    NotStarted,
    RunDeadline,
    error_text,
    health_failure,
    health_text,
    readiness_timeout,
)
from .record import Write, record_applied, record_unapplied

log = get_logger("reconciler.executor")


@dataclass(slots=True, eq=False)
class Waiting:
    """A written change whose object is not Healthy yet, and when to ask again."""

    write: Write
    provider: Provider
    provider_id: str | None
    timeout: float
    started: float
    deadline: float  # the readiness timeout or the run deadline, whichever is first
    interval: float
    due: float
    last: HealthStatus | None = None

    @property
    def change(self) -> Change:
        return self.write.change


class Waits:
    """The health waits of one run, on its clock and within its provider slots."""

    def __init__(
        self,
        store: StateStore,
        providers: ProviderPool,
        *,
        clock: Clock,
        slots: threading.BoundedSemaphore,
        deadline: RunDeadline | None = None,
        health: HealthFn | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.clock = clock
        self.slots = slots
        self.deadline = deadline
        self.on_health = health
        self._telling = threading.Lock()  # health callbacks see one event at a time

    def start(self, w: Write, provider_id: str | None) -> Waiting | None:
        """The wait a written change needs before it counts as applied, if any. A
        restore asks at once; a change first waits one poll interval."""
        if w.change.action == "delete" or w.inst is None:
            return None
        prov = self.providers.get(w.inst.provider)
        timeout = readiness_timeout(prov, w.inst)
        if timeout <= 0:
            return None
        now = self.clock.monotonic()
        deadline = now + timeout
        if self.deadline is not None and not w.restoring:
            deadline = min(deadline, self.deadline.at)
        interval = max(0.0, prov.polling_interval())
        due = now if w.restoring else min(now + interval, deadline)
        return Waiting(w, prov, provider_id, timeout, now, deadline, interval, due)

    def poll(
        self, w: Waiting, run_id: str, commit: str | None, stop: threading.Event | None = None
    ) -> ChangeResult | Waiting:
        """Ask a waiting change's health once: a result when it is settled (and then
        recorded), else `w` again with its next poll due."""
        ch = w.change
        retry: float | None = None
        status: HealthStatus | None
        try:
            with self.slots:
                if stop is not None and stop.is_set():
                    raise NotStarted
                status = w.provider.status(ch.kind, ch.name, ch.environment, w.provider_id)
        except NotStarted:
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
            if w.write.restoring:
                return self.fail(w, run_id, error_text(e))
            return self.fail(w, run_id, f"cannot read its health: {error_text(e)}")
        now = self.clock.monotonic()
        if status is not None and status != w.last:
            w.last = status
            self.tell(ch, status, now - w.started)
        if status is not None and status.health in READY:
            if not w.write.restoring:  # a restore was recorded when it was written
                record_applied(self.store, w.write, run_id, commit, w.provider_id, self.clock.now())
            return ChangeResult(
                ch, "applied", provider_id=w.provider_id, written=True, health=status
            )
        if status is not None and (failure := health_failure(status)) is not None:
            return self.fail(w, run_id, _worded(w, failure))
        delay = w.interval if retry is None else retry
        if now >= w.deadline or (retry is not None and now + delay > w.deadline):
            return self.fail(w, run_id, self._timed_out(w, now, retry))
        w.due = min(now + delay, w.deadline)
        return w

    def expire(self, w: Waiting, run_id: str) -> ChangeResult:
        """Fail a waiting change at once (the run deadline passed)."""
        return self.fail(w, run_id, self._timed_out(w, self.clock.monotonic(), None))

    def abandon(self, w: Waiting, run_id: str, why: str) -> None:
        """Record a waiting change as failed when the run stops before it is Healthy
        (no health callback: the run is stopping, maybe because one failed)."""
        record_unapplied(self.store, w.change, run_id, "failed", why, w.provider_id)

    def _timed_out(self, w: Waiting, now: float, retry: float | None) -> str:
        seen = health_text(w.last)
        deadline = self.deadline
        readiness = f"not Healthy within its readiness timeout of {w.timeout:g} s: {seen}"
        if w.write.restoring:
            return _worded(w, readiness)
        if deadline is not None and w.deadline >= deadline.at and now >= w.deadline:
            return f"still {seen} when {deadline} passed"
        if retry is not None:
            return (
                f"still {seen}; the provider asked to wait {retry:g} s more, past its "
                f"readiness timeout of {w.timeout:g} s"
            )
        return readiness

    def fail(self, w: Waiting, run_id: str, message: str) -> ChangeResult:
        """The write happened, the object is not Healthy: the change failed. The state
        keeps the spec from before (a re-run retries), the change record says why.
        (A restore's record, made when it was written, stands.)"""
        if not w.write.restoring:
            self.tell(w.change, None, self.clock.monotonic() - w.started)
            record_unapplied(self.store, w.change, run_id, "failed", message, w.provider_id)
        return ChangeResult(
            w.change, "failed", error=message, provider_id=w.provider_id, written=True,
            health=w.last,
        )  # fmt: skip

    def tell(self, ch: Change, status: HealthStatus | None, waited: float) -> None:
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


def _worded(w: Waiting, failure: str) -> str:
    """How a failed wait reads: a restore says the old object was put back first."""
    return f"restored, then {failure}" if w.write.restoring else failure
