"""One change: ask whether the lock is still held, make the provider call under a slot,
then record it applied (or hand it to the waits until its object is Healthy), or
record why it failed or was skipped. A provider failure is the change's outcome; a
state failure is raised (nothing can be recorded reliably any more)."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from reconciler.clock import Clock
from reconciler.errors import ReconcilerError, StateError
from reconciler.instances import Instance, InstanceKey
from reconciler.log import get_logger
from reconciler.plan import Change
from reconciler.providers.pool import ProviderPool
from reconciler.state.base import StateStore

from .model import (
    ChangeResult,
    HealthFn,
    LockLost,
    NotStarted,
    ProgressFn,
    RunDeadline,
    error_text,
)
from .record import Write, record_applied, record_unapplied
from .wait import Waiting, Waits

log = get_logger("reconciler.executor")


def call_provider(providers: ProviderPool, w: Write) -> str | None:
    """Make `w` on its provider; the provider id of what now stands (None: deleted)."""
    ch = w.change
    if w.call == "delete":
        old_id = w.live.provider_id if w.live else None
        providers.get(ch.provider).delete(ch.kind, ch.name, ch.environment, old_id)
        return None
    inst = w.inst
    if inst is None:
        raise ReconcilerError(f"{ch.address} is not in the desired state any more")
    prov = providers.get(inst.provider)
    if w.call == "update" and w.live is not None and w.live.provider_id is not None:
        prov.update(inst, w.live.provider_id)
        return w.live.provider_id
    if w.call == "replace" and w.live is not None:
        # remove the old object (maybe on another provider), then create
        providers.get(w.live.provider).delete(ch.kind, ch.name, ch.environment, w.live.provider_id)
    return prov.create(inst)


class Executor:
    """Applies and records one change at a time, for as many threads as call it."""

    def __init__(
        self,
        store: StateStore,
        *,
        desired: Mapping[InstanceKey, Instance],
        providers: ProviderPool,
        clock: Clock,
        parallelism: int = 8,
        progress: ProgressFn | None = None,
        health: HealthFn | None = None,
        deadline: RunDeadline | None = None,
    ) -> None:
        self.store = store
        self.desired = desired
        self.providers = providers
        self.clock = clock
        self.parallelism = max(1, parallelism)
        self.progress = progress
        self.deadline = deadline
        #: Provider calls under way at once: the parallelism. A worker records its
        #: change after giving its slot back, so the slots stay busy with calls.
        self.slots = threading.BoundedSemaphore(self.parallelism)
        self.waits = Waits(
            store, providers, clock=clock, slots=self.slots, deadline=deadline, health=health
        )
        #: Why the last run stopped calling providers: its lock was found lost.
        self.lock_lost: StateError | None = None

    def do(
        self, ch: Change, run_id: str, commit: str | None, stop: threading.Event | None = None
    ) -> ChangeResult | Waiting:
        """Apply one planned change: recorded at once when it needs no waiting, else
        handed back as `Waiting` (poll it with `waits.poll`). Once `stop` is set, a
        change still waiting for a provider slot does not start, nor one whose lock is
        found lost (`LockLost`) just before its provider call."""
        recorded = None
        if ch.action != "create":
            recorded = self.store.applied(ch.environment, (ch.key,)).get(ch.key)
        w = Write.planned(ch, self.desired.get(ch.key), recorded)
        try:
            provider_id = self.write(w, stop)
        except (NotStarted, LockLost):
            raise
        except Exception as e:  # a provider plugin's bug must not lose the run record
            return self.fail(ch, run_id, error_text(e))
        waiting = self.waits.start(w, provider_id)
        if waiting is not None:
            return waiting
        record_applied(self.store, w, run_id, commit, provider_id, self.clock.now())
        return ChangeResult(ch, "applied", provider_id=provider_id, written=True)

    def write(self, w: Write, stop: threading.Event | None = None) -> str | None:
        """The provider call of `w`, under a slot and only while the lock is held."""
        with self.slots:
            if stop is not None and stop.is_set():
                raise NotStarted
            self.check_lock(w.change.environment)
            return call_provider(self.providers, w)

    def check_lock(self, environment: str) -> None:
        """The lock is still this run's, else `LockLost`. A state that cannot say so is
        taken as a lost lock too: no provider call is made on a lock not known held."""
        try:
            self.store.check_lock(environment)
        except StateError as e:
            raise LockLost(e) from None

    def fail(self, ch: Change, run_id: str, message: str) -> ChangeResult:
        record_unapplied(self.store, ch, run_id, "failed", message)
        return ChangeResult(ch, "failed", error=message)

    def skip(self, ch: Change, run_id: str, blocker: InstanceKey) -> ChangeResult:
        return self.skip_because(ch, run_id, f"{blocker.address} did not apply")

    def skip_because(self, ch: Change, run_id: str, message: str) -> ChangeResult:
        record_unapplied(self.store, ch, run_id, "skipped", message)
        return ChangeResult(ch, "skipped", error=message)

    def concurrency(self, providers: set[str]) -> int | None:
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
