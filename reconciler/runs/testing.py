"""The executions contract, one suite for every backend (as `state/testing.py` is for
the state): each check opens stores through a factory on one fresh state.

    @pytest.mark.parametrize("check", testing.CHECKS, ids=testing.check_name)
    def test_contract(check, factory):
        check(factory)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from reconciler.errors import StateError
from reconciler.runs.model import ABANDON_GRACE, INTERRUPTED, Execution, Holder, Query
from reconciler.runs.store import ExecutionStore, reap

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Factory(Protocol):
    def __call__(self, *, read_only: bool = False) -> ExecutionStore: ...


Check = Callable[[Factory], None]
CHECKS: list[Check] = []


def check_name(check: Check) -> str:
    return check.__name__.removeprefix("check_")


def _check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


def _ex(n: int, *, env: str = "dev", dep: str = "chat", status: str = "completed") -> Execution:
    return Execution(
        f"ex-{n:04d}", env, dep, "manual", status, T0 + timedelta(seconds=n),  # type: ignore[arg-type]
        latency_ms=10.0 + n, input_tokens=n, output_tokens=2 * n, result=f"out {n}",
    )  # fmt: skip


def _fire(n: int, schedule: str = "nightly") -> Execution:
    ex = _ex(n, status="pending")
    ex.trigger, ex.schedule, ex.fire_time = "schedule", schedule, T0
    return ex


def _expect(ok: bool, promise: str) -> None:
    if not ok:
        raise AssertionError(promise)


@_check
def check_records_and_reads_back_whole(factory: Factory) -> None:
    s = factory()
    try:
        ex = _ex(1)
        ex.cost, ex.currency, ex.error, ex.holder = 0.5, "USD", None, Holder("h", "m", 7)
        _expect(s.add(ex), "add() records a new execution")
        got = s.get(ex.id)
        _expect(got == ex, f"get() returns it as recorded: {got} != {ex}")
        _expect(got is not None and got.holder == ex.holder, "the holder is kept")
        _expect(s.get("ex-nope") is None, "get() of an unknown id is None")
    finally:
        s.close()
    ro = factory(read_only=True)
    try:
        _expect(ro.get("ex-0001") is not None, "a read-only store reads it")
        try:
            ro.add(_ex(2))
        except StateError:
            pass
        else:
            raise AssertionError("a read-only store refuses to record")
    finally:
        ro.close()


@_check
def check_a_fire_is_recorded_once(factory: Factory) -> None:
    a, b = factory(), factory()
    try:
        _expect(a.add(_fire(1)), "the first execution of a fire is recorded")
        _expect(not b.add(_fire(2)), "a second one of the same fire, from another store, is not")
        _expect(b.get("ex-0002") is None, "nothing of the refused one is written")
        _expect(b.add(_fire(3, "hourly")), "another schedule's fire at that time is its own")
    finally:
        a.close()
        b.close()


@_check
def check_many_are_recorded_at_once_each_fire_once(factory: Factory) -> None:
    s = factory()
    try:
        _expect(s.add(_fire(1)), "a fire recorded")
        later = _fire(4)
        later.fire_time = T0 + timedelta(minutes=10)
        got = s.add_many([_ex(2), _fire(3), later, _fire(5, "hourly"), _fire(6, "hourly")])
        _expect(got == [True, False, True, True, False], f"add_many: {got}")
        _expect(s.get("ex-0003") is None and s.get("ex-0006") is None, "refused ones unwritten")
        fires = s.last_fires("dev")
        _expect(fires == {"nightly": T0 + timedelta(minutes=10), "hourly": T0},
                f"each schedule's latest fire: {fires}")  # fmt: skip
        _expect(s.last_fires("prod") == {}, "per environment")
    finally:
        s.close()


@_check
def check_status_moves_only_from_what_it_was(factory: Factory) -> None:
    s = factory()
    try:
        ex = _ex(1, status="running")
        s.add(ex)
        ex.status = "cancelled"
        _expect(s.transition(ex, ("running",)), "running → cancelled")
        late = _ex(1, status="completed")
        _expect(not s.transition(late, ("running",)), "a late answer never overwrites cancelled")
        got = s.get(ex.id)
        _expect(got is not None and got.status == "cancelled", "it stays cancelled")
    finally:
        s.close()


@_check
def check_finds_newest_first_with_filters(factory: Factory) -> None:
    s = factory()
    try:
        for n in range(1, 7):
            s.add(
                _ex(n, env="dev" if n % 2 else "prod", status="failed" if n == 5 else "completed")
            )
        ids = [e.id for e in s.find(Query())]
        _expect(ids == [f"ex-{n:04d}" for n in range(6, 0, -1)], f"newest first: {ids}")
        _expect(len(s.find(Query(environments=("dev",)))) == 3, "by environment")
        _expect([e.id for e in s.find(Query(statuses=("failed",)))] == ["ex-0005"], "by status")
        since = s.find(Query(since=T0 + timedelta(seconds=4)))
        _expect([e.id for e in since] == ["ex-0006", "ex-0005", "ex-0004"], "since a time")
        _expect(len(s.find(Query(limit=2))) == 2, "at most limit")
        _expect(not s.find(Query(deployments=("other",))), "by deployment")
    finally:
        s.close()


@_check
def check_keeps_only_the_newest(factory: Factory) -> None:
    s = factory()
    try:
        for n in range(1, 6):
            s.add(_ex(n))
        s.add(_ex(0, status="running"))  # the oldest, but under way: kept
        s.add(_ex(9, env="prod"))
        dropped = s.prune("dev", 2)
        _expect(dropped == 3, f"three finished ones dropped, not {dropped}")
        left = sorted(e.id for e in s.find(Query(limit=None)))
        _expect(left == ["ex-0000", "ex-0004", "ex-0005", "ex-0009"], f"left: {left}")
    finally:
        s.close()


@_check
def check_import_copies_everything(factory: Factory) -> None:
    s = factory()
    try:
        items = [_ex(1), _fire(2)]
        s.import_executions(items)
        _expect([e.id for e in s.find(Query())] == ["ex-0002", "ex-0001"], "imported")
        _expect(not s.add(_fire(3)), "an imported fire keeps its key")
    finally:
        s.close()


@_check
def check_a_dead_process_execution_is_marked_failed(factory: Factory) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    me = Holder.me()
    s = factory()
    try:
        gone = _ex(1, status="running")
        gone.holder = Holder(me.host, me.machine, int(dead.stdout))
        alive = _ex(2, status="running")
        alive.holder = Holder(me.host, me.machine, os.getpid())
        elsewhere = _ex(3, status="running")
        elsewhere.holder = Holder("another-host", me.machine, int(dead.stdout))
        for ex in (gone, alive, elsewhere):
            s.add(ex)
        marked = reap(s)
        _expect([e.id for e in marked] == [gone.id], f"only the dead one: {marked}")
        got = s.get(gone.id)
        _expect(got is not None and got.status == "failed" and got.error == INTERRUPTED,
                "recorded failed, saying why")  # fmt: skip
        for ex in (alive, elsewhere):
            now = s.get(ex.id)
            _expect(now is not None and now.status == "running", "live or unknown stays running")
    finally:
        s.close()


@_check
def check_an_execution_past_its_deadline_elsewhere_is_marked_abandoned(factory: Factory) -> None:
    me = Holder.me()
    s = factory()
    try:
        deadline = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
        over = _ex(1, status="running")
        over.holder = Holder("another-host", "another-machine", 4242)
        over.deadline = deadline
        within = _ex(2, status="pending")
        within.holder = Holder("another-host", "another-machine", 4243)
        within.deadline = deadline + timedelta(minutes=5)
        mine = _ex(3, status="running")
        mine.holder = Holder(me.host, me.machine, os.getpid())
        mine.deadline = deadline
        for ex in (over, within, mine):
            s.add(ex)
        # past the deadline, but within its grace: nobody is declared dead yet
        _expect(reap(s, deadline + ABANDON_GRACE) == [], "nothing abandoned within the grace")
        marked = reap(s, deadline + ABANDON_GRACE + timedelta(seconds=1))
        # this process is seen alive: its own call is never declared abandoned
        _expect([e.id for e in marked] == [over.id], f"only the one elsewhere: {marked}")
        alive = s.get(mine.id)
        _expect(alive is not None and alive.status == "running", "a live holder here stays")
        got = s.get(over.id)
        _expect(got is not None and got.status == "failed" and got.error is not None
                and got.error.startswith("abandoned: its holder (another-host, pid 4242)"),
                f"recorded failed, saying why: {got}")  # fmt: skip
        still = s.get(within.id)
        _expect(still is not None and still.status == "pending", "within its deadline it stays")
        _expect(still is not None and still.deadline == within.deadline, "the deadline is kept")
    finally:
        s.close()
