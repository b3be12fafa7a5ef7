"""One run's changes in dependency order on worker threads.

Scheduling is a ready queue (`graphlib.TopologicalSorter`): a change is queued when its
last dependency finishes, so the work per change is constant however large the plan.
Worker threads take ready changes themselves; `parallelism` bounds the provider calls
under way, and a few spare workers write state records meanwhile (`worker_count`).
Fewer workers run when the run's providers say they can use fewer (`max_concurrency`).
Changes waiting to become Healthy sit in a heap by when their next poll is due."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable

from reconciler.errors import StateError
from reconciler.httpclient import WaitDeadline, wait_deadline
from reconciler.instances import InstanceKey
from reconciler.log import get_logger
from reconciler.plan import Change, EnvironmentPlan

from .change import Executor
from .model import (
    ChangeResult,
    LockLost,
    NotStarted,
    dependency_order,
    error_text,
    failed_dependency,
    worker_count,
)
from .wait import Waiting

log = get_logger("reconciler.executor")


def run_changes(
    ex: Executor, plan: EnvironmentPlan, run_id: str, commit: str | None
) -> list[ChangeResult]:
    """Execute in dependency order; independent changes run concurrently.

    The first exception (a state write failing in a worker, the progress callback,
    Ctrl-C) stops new changes from starting and polls from being made; the calls
    under way finish and are recorded, then it is raised."""
    schedule = Schedule(ex, plan, run_id, commit)
    ex.lock_lost = None
    count = worker_count(ex.parallelism, len(plan.changes))
    cap = ex.concurrency({c.provider for c in plan.changes})
    workers = [
        threading.Thread(target=_bounded(ex, schedule.work), name=f"apply-{i}")
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
        ex.lock_lost = schedule.lost
    return schedule.results()


def _bounded(ex: Executor, work: Callable[[], None]) -> Callable[[], None]:
    """A worker's body with every HTTP retry wait bounded by the run deadline (a server
    asking for a longer wait fails the call at once)."""
    deadline = ex.deadline
    if deadline is None:
        return work

    def bounded() -> None:
        with wait_deadline(WaitDeadline(deadline.left, str(deadline))):
            work()

    return bounded


class Schedule:
    """One run's ready queue, shared by the workers. A worker settles the change it
    finished and takes the next ready one itself, so a change costs no hand-off to a
    coordinating thread and the work per change does not grow with the plan. A worker
    takes a due poll before a ready change (finishing a change frees its dependants),
    and waits on the run's clock until the next poll is due when there is nothing else."""

    def __init__(
        self, ex: Executor, plan: EnvironmentPlan, run_id: str, commit: str | None
    ) -> None:
        self.ex = ex
        self.clock = ex.clock
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
                except LockLost as lost:
                    with self.cond:
                        self.lost = self.lost or lost.error
                    assert not isinstance(task, Waiting)  # only a write checks the lock
                    res = self._not_started(task)
            except NotStarted:
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
        return self.ex.skip_because(task, self.run_id, f"not started: {self.lost.message}")

    def _run(self, task: Change | Waiting) -> ChangeResult | Waiting:
        ex, waits = self.ex, self.ex.waits
        deadline = ex.deadline
        if self.lost is not None:  # no provider call any more, not even a health poll
            if isinstance(task, Waiting):
                why = f"not Healthy yet when the run stopped: {self.lost.message}"
                return waits.fail(task, self.run_id, why)
            return self._not_started(task)
        if isinstance(task, Waiting):
            if deadline is not None and deadline.passed():
                return waits.expire(task, self.run_id)
            return waits.poll(task, self.run_id, self.commit, self.stopping)
        if deadline is not None and deadline.passed():
            return ex.skip_because(task, self.run_id, f"not started: {deadline} passed")
        blocker = failed_dependency(task, self.done)
        if blocker is not None:
            return ex.skip(task, self.run_id, blocker)
        return ex.do(task, self.run_id, self.commit, self.stopping)

    def _take(self) -> Change | Waiting | None:
        """A due poll, else the next ready change; None when all are settled or the run
        is stopping. Waits for whichever comes first: a change ready, a poll due."""
        with self.cond:
            while self.failure is None:
                if self.polls and self.polls[0][0] <= self.clock.monotonic():
                    return heapq.heappop(self.polls)[2]
                if self.ready:
                    self.busy += 1
                    return self.changes[self.ready.popleft()]
                if not self.busy:
                    return None
                due = self.polls[0][0] - self.clock.monotonic() if self.polls else None
                self.clock.wait(self.cond, due)
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
                self.ex.report(res)  # under the lock: progress sees one at a time
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
        why = f"not Healthy yet when the run stopped ({error_text(self.failure)})"
        while self.polls:
            w = heapq.heappop(self.polls)[2]
            try:
                self.ex.waits.abandon(w, self.run_id, why)
            except Exception as e:  # the run's own error is the one to report
                log.warning("cannot record a change", change=w.change.address, error=error_text(e))
                return

    def results(self) -> list[ChangeResult]:
        if self.failure is not None:
            raise self.failure
        return [self.done[k] for k in self.changes]
