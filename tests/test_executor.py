"""The executor in-process: an in-memory provider (`providers.testing`) against a real
SQLite state file. Ordering and concurrency, dependants skipped after a failure,
rollback-on-failure, state writes that fail mid-run, the cycle guard, and the run
record that always ends with an outcome while the lock is always released."""

from __future__ import annotations

import dataclasses as dc
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import commit_all, init_repo, run_cli, write_files
from executor_world import ENV, PROVIDERS, REPO_ENV, apply, desired_of, outcomes, plan_of

from reconciler.errors import ProviderError, ReconcilerError, StateError
from reconciler.executor import (
    ROLLBACK_REASON,
    ChangeResult,
    RunContext,
    RunRequest,
    execute_environment,
    instance_from_record,
    worker_count,
)
from reconciler.executor.record import Live
from reconciler.executor.restore import inverse
from reconciler.instances import Instance, InstanceKey
from reconciler.plan import Change, EnvironmentPlan
from reconciler.providers.testing import MemoryProvider
from reconciler.state.base import AppliedRecord, ChangeRecord, LockInfo, RunRecord
from reconciler.state.sqlite import SQLiteState
from reconciler.vocabulary import Action


def deployment(name: str, model: str = "gpt-4o") -> Instance:
    return Instance(ENV, "Deployment", name, "mem", {"model": model, "endpoint": f"/{name}"})


def schedule(name: str, dep: Instance, cron: str = "0 * * * *") -> Instance:
    return Instance(
        ENV,
        "Schedule",
        name,
        "mem",
        {"deployment": dep.name, "cron": cron},
        depends_on=(dep.key,),
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteState]:
    s = SQLiteState(tmp_path / "state.db", env={})
    yield s
    s.close()


# -- ordering and concurrency ---------------------------------------------------------


def test_applies_everything_records_it_and_closes_the_providers(store: SQLiteState) -> None:
    mem = MemoryProvider()
    chat = deployment("chat")
    desired = desired_of(chat, deployment("search"), schedule("nightly", chat))
    result = apply(store, mem, desired)
    assert result.outcome == "applied"
    assert set(outcomes(result).values()) == {"applied"}
    assert set(mem.objects) == set(desired)
    assert set(store.applied(ENV)) == set(desired)
    run = store.run(result.run_id or "")
    assert run is not None and run.outcome == "applied" and run.finished_at is not None
    assert len(run.changes) == 3
    assert store.lock_holder(ENV) is None
    assert mem.closes == 1
    assert apply(store, mem, desired).outcome == "noop"  # converged


def test_the_run_records_its_context_and_policy(store: SQLiteState) -> None:
    ctx = RunContext(
        commit="c0ffee",
        trigger="rollback",
        approvers=["alice"],
        details={"override_window": True},
        policy={"protected": True},
    )
    request = RunRequest(
        desired=desired_of(deployment("a")),
        providers=PROVIDERS,
        context=ctx,
        provider_factory=MemoryProvider().factory(),
    )
    result = execute_environment(store, plan_of(store, desired_of(deployment("a"))), request)
    run = store.run(result.run_id or "")
    assert run is not None
    assert (run.commit, run.trigger, run.approvers) == ("c0ffee", "rollback", ["alice"])
    assert run.details == {"override_window": True} and run.policy == {"protected": True}


def test_a_dependant_starts_only_after_its_dependency_applied(store: SQLiteState) -> None:
    mem = MemoryProvider(latency=0.02)
    deps = [deployment(f"d{i}") for i in range(6)]
    scheds = [schedule(f"s{i}", d) for i, d in enumerate(deps)]
    apply(store, mem, desired_of(*deps, *scheds), parallelism=4)
    order = mem.calls_of("create")
    for d, s in zip(deps, scheds, strict=True):
        assert order.index(d.key) < order.index(s.key)


def test_never_more_provider_calls_at_once_than_the_parallelism(store: SQLiteState) -> None:
    mem = MemoryProvider(latency=0.05)
    apply(store, mem, desired_of(*(deployment(f"d{i}") for i in range(12))), parallelism=3)
    assert 1 < mem.peak_concurrency <= 3


def test_a_provider_that_takes_one_call_at_a_time_gets_one_worker(store: SQLiteState) -> None:
    class OneAtATime(MemoryProvider):
        max_concurrency: ClassVar[int | None] = 1

    mem = OneAtATime(latency=0.01)
    workers: set[str] = set()
    desired = desired_of(*(deployment(f"d{i}") for i in range(8)))
    result = apply(
        store,
        mem,
        desired,
        parallelism=4,
        progress=lambda res: workers.add(threading.current_thread().name),
    )
    assert result.outcome == "applied" and set(store.applied(ENV)) == set(desired)
    assert mem.peak_concurrency == 1 and workers == {"apply-0"}


def test_a_change_reads_only_its_own_key_from_the_state(tmp_path: Path) -> None:
    reads: list[tuple[InstanceKey, ...] | None] = []

    class Counting(SQLiteState):
        def applied(self, environment: str, keys: Any = None) -> dict[InstanceKey, AppliedRecord]:
            reads.append(None if keys is None else tuple(keys))
            return super().applied(environment, keys)

    store = Counting(tmp_path / "state.db", env={})
    mem = MemoryProvider()
    desired = desired_of(*(deployment(f"d{i}") for i in range(5)))
    apply(store, mem, desired)
    changed = {k: deployment(k.name, model="gpt-4o-mini") for k in desired}
    plan = plan_of(store, changed)
    reads.clear()
    assert apply(store, mem, changed, plan).outcome == "applied"
    assert sorted(r for r in reads if r is not None) == sorted((k,) for k in desired)
    assert None not in reads  # nobody re-read the whole environment
    store.close()


def test_each_recorded_change_carries_the_plans_field_diff(store: SQLiteState) -> None:
    mem = MemoryProvider()
    chat = deployment("chat")
    apply(store, mem, desired_of(chat))
    result = apply(store, mem, desired_of(deployment("chat", model="gpt-4o-mini")))
    run = store.run(result.run_id or "")
    assert run is not None
    assert [c.diff for c in run.changes] == [
        [{"path": "model", "before": "gpt-4o", "after": "gpt-4o-mini"}]
    ]


# -- failures -------------------------------------------------------------------------


def test_dependants_of_a_failed_change_are_skipped_and_the_rest_applies(
    store: SQLiteState,
) -> None:
    mem = MemoryProvider()
    chat, search = deployment("chat"), deployment("search")
    nightly = schedule("nightly", chat)
    mem.fail(chat.key, "create", "503 Service Unavailable")
    result = apply(store, mem, desired_of(chat, search, nightly))
    assert result.outcome == "failed"
    assert outcomes(result) == {
        "deployment.chat": "failed",
        "deployment.search": "applied",
        "schedule.nightly": "skipped",
    }
    by_address = {r.change.address: r for r in result.results}
    assert by_address["schedule.nightly"].error == "deployment.chat did not apply"
    assert result.message == "deployment.chat: provider 'memory': 503 Service Unavailable"
    assert nightly.key not in mem.calls_of("create")  # never sent to the provider
    run = store.run(result.run_id or "")
    assert run is not None and run.outcome == "failed"
    assert {(c.key.name, c.outcome) for c in run.changes} == {
        ("chat", "failed"),
        ("search", "applied"),
        ("nightly", "skipped"),
    }
    assert set(store.applied(ENV)) == {search.key}
    # the provider is back: a re-run applies exactly what is left
    result = apply(store, mem, desired_of(chat, search, nightly))
    assert outcomes(result) == {"deployment.chat": "applied", "schedule.nightly": "applied"}


def test_a_skip_propagates_down_a_chain_of_dependencies(store: SQLiteState) -> None:
    a = deployment("a")
    b = Instance(ENV, "Deployment", "b", "mem", {"model": "m"}, depends_on=(a.key,))
    c = Instance(ENV, "Deployment", "c", "mem", {"model": "m"}, depends_on=(b.key,))
    mem = MemoryProvider()
    mem.fail(a.key, "create")
    result = apply(store, mem, desired_of(a, b, c))
    by_address = {r.change.address: r for r in result.results}
    assert [by_address[x].outcome for x in ("deployment.a", "deployment.b", "deployment.c")] == [
        "failed",
        "skipped",
        "skipped",
    ]
    assert by_address["deployment.c"].error == "deployment.b did not apply"


def test_a_provider_bug_fails_its_change_not_the_run(store: SQLiteState) -> None:
    mem = MemoryProvider()
    chat, search = deployment("chat"), deployment("search")
    mem.fail(chat.key, "create", RuntimeError("plugin exploded"))
    result = apply(store, mem, desired_of(chat, search))
    assert outcomes(result) == {"deployment.chat": "failed", "deployment.search": "applied"}
    assert result.results[0].error == "RuntimeError: plugin exploded"


# -- rollback on failure --------------------------------------------------------------


def test_rollback_on_failure_puts_back_what_this_run_changed(store: SQLiteState) -> None:
    mem = MemoryProvider()
    a, b, gone = deployment("a"), deployment("b"), deployment("gone")
    apply(store, mem, desired_of(a, b, gone))
    v1 = {k: mem.objects[k].body for k in (a.key, gone.key)}
    v1_ids = {k: mem.objects[k].provider_id for k in (a.key, gone.key)}
    # v2: update a, create new, delete gone; b's update fails
    a2, b2, new = deployment("a", "gpt-4o-mini"), deployment("b", "gpt-4o-mini"), deployment("new")
    mem.fail(b.key, "update", "500 Internal Server Error")
    result = apply(store, mem, desired_of(a2, b2, new), rollback_on_failure=True)
    assert result.outcome == "failed"
    assert outcomes(result) == {
        "deployment.a": "applied",
        "deployment.new": "applied",
        "deployment.b": "failed",
        "deployment.gone": "applied",
    }
    assert {r.change.address: r.outcome for r in result.restored} == {
        "deployment.a": "applied",
        "deployment.new": "applied",
        "deployment.gone": "applied",
    }
    # the provider holds v1 again, and the state says so
    assert set(mem.objects) == {a.key, b.key, gone.key}
    assert mem.objects[a.key].body == v1[a.key]
    assert mem.objects[a.key].provider_id == v1_ids[a.key]  # updated in place
    assert mem.objects[gone.key].body == v1[gone.key]
    applied = store.applied(ENV)
    assert set(applied) == {a.key, b.key, gone.key}
    assert applied[a.key].spec == v1[a.key]
    assert applied[gone.key].provider_id == mem.objects[gone.key].provider_id
    run = store.run(result.run_id or "")
    assert run is not None and run.outcome == "failed"
    assert sorted(run.details["rolled_back"]) == [
        "deployment.a",
        "deployment.gone",
        "deployment.new",
    ]
    assert [c.error for c in run.changes[-3:]] == ["rollback-on-failure"] * 3
    # the next plan is the whole change again
    assert [c.address for c in plan_of(store, desired_of(a2, b2, new)).changes] == [
        "deployment.a",
        "deployment.b",
        "deployment.new",
        "deployment.gone",
    ]


def test_restore_goes_on_past_any_failure(store: SQLiteState) -> None:
    mem = MemoryProvider()
    a, b = deployment("a"), deployment("b")
    apply(store, mem, desired_of(a, b))
    c = deployment("c")
    # the failure that triggers the restore; last, so its report is where the run ends
    # (parallelism 1 still runs three workers: it alone did not order the changes)
    d = Instance(ENV, "Deployment", "d", "mem", {"model": "m"}, depends_on=(a.key, b.key, c.key))
    mem.fail(d.key, "create")

    def break_restore(res: ChangeResult) -> None:
        if res.change.key == d.key:  # the run is over: restore comes next
            mem.fail(a.key, "update", RuntimeError("bug while restoring"))
            mem.fail(c.key, "delete", "cannot delete")

    desired = desired_of(deployment("a", "v2"), deployment("b", "v2"), c, d)
    result = apply(
        store, mem, desired, rollback_on_failure=True, parallelism=1, progress=break_restore
    )
    assert outcomes(result) == {
        "deployment.a": "applied",
        "deployment.b": "applied",
        "deployment.c": "applied",
        "deployment.d": "failed",
    }
    assert [(r.change.address, r.outcome, r.error) for r in result.restored] == [
        ("deployment.c", "failed", "provider 'memory': cannot delete"),
        ("deployment.b", "applied", None),
        ("deployment.a", "failed", "RuntimeError: bug while restoring"),
    ]
    assert mem.objects[b.key].body["model"] == "gpt-4o"
    applied = store.applied(ENV)
    assert applied[b.key].spec["model"] == "gpt-4o"  # restored
    assert applied[a.key].spec["model"] == "v2"  # its restore failed: the state says so
    assert c.key in applied
    run = store.run(result.run_id or "")
    assert run is not None and run.outcome == "failed" and run.finished_at is not None
    assert run.details["rolled_back"] == ["deployment.b"]
    assert run.details["restore_failed"] == {
        "deployment.c": "provider 'memory': cannot delete",
        "deployment.a": "RuntimeError: bug while restoring",
    }
    assert store.lock_holder(ENV) is None


def test_restore_survives_a_plugin_bug(store: SQLiteState) -> None:
    mem = MemoryProvider()
    a, b = deployment("a"), deployment("b")
    mem.fail(b.key, "create")
    mem.fail(a.key, "delete", RuntimeError("bug while restoring"))
    result = apply(store, mem, desired_of(a, b), rollback_on_failure=True)
    assert [(r.change.address, r.outcome, r.error) for r in result.restored] == [
        ("deployment.a", "failed", "RuntimeError: bug while restoring")
    ]
    run = store.run(result.run_id or "")
    assert run is not None and run.outcome == "failed"


def test_a_replaced_object_is_put_back_by_removing_its_replacement(store: SQLiteState) -> None:
    """A replace that applied, then a failure: the restore deletes the object the run
    created (its id, not the old one) and creates the recorded spec again, and the
    state names the object that now stands."""
    mem = MemoryProvider()
    a, b = deployment("a"), deployment("b")
    apply(store, mem, desired_of(a, b))
    old_id = mem.objects[a.key].provider_id
    a2, b2 = deployment("a", "gpt-4o-mini"), deployment("b", "gpt-4o-mini")
    plan = plan_of(store, desired_of(a2, b2))
    plan.changes = [dc.replace(c, action="replace") if c.key == a.key else c for c in plan.changes]
    mem.fail(b.key, "update", "refused")
    result = apply(store, mem, desired_of(a2, b2), plan, rollback_on_failure=True)
    (replaced,) = [r for r in result.results if r.change.key == a.key]
    assert replaced.outcome == "applied" and replaced.provider_id not in (None, old_id)
    assert [(r.change.address, r.outcome) for r in result.restored] == [("deployment.a", "applied")]
    calls = [(c.action, c.provider_id) for c in mem.calls if c.key == a.key][1:]
    assert calls == [
        ("delete", old_id),  # the replace
        ("create", None),
        ("delete", replaced.provider_id),  # the restore
        ("create", None),
    ]
    assert mem.objects[a.key].body == a.body()
    recorded = store.applied(ENV)[a.key]
    assert recorded.spec_hash == a.hash()
    assert recorded.provider_id == mem.objects[a.key].provider_id


def test_a_restore_makes_no_provider_call_once_the_lock_is_lost(tmp_path: Path) -> None:
    """Restore writes go through the same lock check as any change: a lock lost after
    the last change fails each restore, naming it, without calling the provider."""

    class Losing(SQLiteState):
        lost = False

        def check_lock(self, environment: str) -> None:
            if self.lost:
                raise StateError(f"the lock of {environment!r} was broken")
            super().check_lock(environment)

    store = Losing(tmp_path / "state.db", env={})
    mem = MemoryProvider()
    a = deployment("a")
    apply(store, mem, desired_of(a))
    c = deployment("c")
    d = Instance(ENV, "Deployment", "d", "mem", {"model": "m"}, depends_on=(a.key, c.key))
    mem.fail(d.key, "create")

    def lose(res: ChangeResult) -> None:
        if res.change.key == d.key:  # the last change: restore comes next
            store.lost = True

    desired = desired_of(deployment("a", "v2"), c, d)
    before = len(mem.calls)
    result = apply(store, mem, desired, rollback_on_failure=True, progress=lose)
    assert outcomes(result) == {
        "deployment.a": "applied",
        "deployment.c": "applied",
        "deployment.d": "failed",
    }
    assert len(mem.calls) - before == 3  # the run's three; none for the restore
    assert [(r.change.address, r.outcome, r.error) for r in result.restored] == [
        ("deployment.c", "failed", "the lock of 'dev' was broken"),
        ("deployment.a", "failed", "the lock of 'dev' was broken"),
    ]
    assert store.applied(ENV)[a.key].spec["model"] == "v2"  # nothing was put back
    run = store.run(result.run_id or "")
    assert run is not None and run.details["rolled_back"] == []
    store.close()


def test_inverse_changes_are_ordinary_writes() -> None:
    """What restore asks of the change code for each kind of change the run made."""
    a = deployment("a")
    old = AppliedRecord(
        environment=ENV,
        kind="Deployment",
        name="a",
        provider="mem",
        provider_id="id-old",
        spec=a.body(),
        spec_hash=a.hash(),
        secret_fingerprints={"k": "fp"},
        commit="c0",
        run_id="r0",
        applied_at=datetime(2025, 1, 1, tzinfo=UTC),
    )
    new = deployment("a", "gpt-4o-mini")

    def made(action: Action, provider_id: str | None = "id-new") -> ChangeResult:
        return ChangeResult(Change(action, a.key, "mem", None, new.body()), "applied", None,
                            provider_id, written=True)  # fmt: skip

    created = inverse(made("create"), None, desired_of(new))
    assert (created.change.action, created.call, created.inst) == ("delete", "delete", None)
    assert created.live == Live("mem", "id-new")
    updated = inverse(made("update"), old, {})
    assert (updated.change.action, updated.call) == ("update", "update")
    assert updated.live == Live("mem", "id-old")
    assert updated.inst is not None and updated.inst.hash() == a.hash()
    deleted = inverse(made("delete", None), old, {})
    assert (deleted.call, deleted.live) == ("create", None)
    replaced = inverse(made("replace"), old, {})
    assert (replaced.call, replaced.live) == ("replace", Live("mem", "id-new"))
    assert inverse(made("replace", None), old, {}).call == "create"
    # recorded as the update that puts the old record back, whatever call made it
    change, applied = replaced.applied("r1", "ignored", "id-back", old.applied_at)
    assert (change.action, change.outcome, change.error) == ("update", "applied", ROLLBACK_REASON)
    assert (change.before_hash, change.after_hash, change.provider_id) == (
        None,
        old.spec_hash,
        "id-back",
    )
    assert applied == dc.replace(old, provider_id="id-back", run_id="r1")
    change, applied = created.applied("r1", None, None, old.applied_at)
    assert (change.action, change.error, applied) == ("delete", ROLLBACK_REASON, None)


# -- state writes that fail mid-run ---------------------------------------------------


class FailingState(SQLiteState):
    """A real SQLite state whose Nth `record_change` (and, if asked, `finish_run` and
    the lock release) fails, as a full disk or a lost lock would."""

    def __init__(
        self, path: Path, *, fail_at: int, finish_fails: bool = False, release_fails: bool = False
    ) -> None:
        super().__init__(path, env={})
        self.fail_at = fail_at
        self.finish_fails = finish_fails
        self.release_fails = release_fails
        self.writes = 0
        self._count = threading.Lock()

    def record_change(
        self,
        run_id: str,
        change: ChangeRecord,
        applied: AppliedRecord | None,
        removed: InstanceKey | None,
    ) -> None:
        with self._count:
            self.writes += 1
            fail = self.writes == self.fail_at
        if fail:
            raise StateError(f"cannot write state {self.url}: database or disk is full")
        super().record_change(run_id, change, applied, removed)

    def finish_run(self, run_id: str, outcome: str, details: dict[str, Any] | None = None) -> None:
        if self.finish_fails:
            raise StateError("cannot write state: the lock is no longer ours")
        super().finish_run(run_id, outcome, details)

    @contextmanager
    def lock(
        self, environment: str, run_id: str, *, break_lock: bool = False
    ) -> Iterator[LockInfo]:
        with super().lock(environment, run_id, break_lock=break_lock) as info:
            try:
                yield info
            finally:
                if self.release_fails:
                    raise StateError("cannot release the lock: it was taken over")


def test_a_state_write_failing_mid_run_ends_the_run_failed_and_frees_the_lock(
    tmp_path: Path,
) -> None:
    store = FailingState(tmp_path / "state.db", fail_at=5)
    mem = MemoryProvider()
    chat = deployment("chat")
    desired = desired_of(*(deployment(f"d{i:02d}") for i in range(20)), chat)
    desired |= desired_of(schedule("nightly", chat))
    with pytest.raises(StateError, match="database or disk is full"):
        apply(store, mem, desired, parallelism=4)
    assert store.lock_holder(ENV) is None
    (run,) = store.runs(ENV)
    assert run.outcome == "failed" and run.finished_at is not None
    assert "database or disk is full" in run.details["error"]
    recorded = len(store.applied(ENV))
    assert 4 <= recorded < len(desired)  # what was under way finished; nothing new started
    assert len(run.changes) == recorded
    # a re-run converges: everything applied once, nothing duplicated
    result = apply(store, mem, desired, parallelism=4)
    assert result.outcome == "applied"
    assert len(result.results) == len(desired) - recorded
    assert set(store.applied(ENV)) == set(desired) == set(mem.objects)
    ids = [o.provider_id for o in mem.objects.values()]
    assert len(set(ids)) == len(ids)
    assert {k: r.provider_id for k, r in store.applied(ENV).items()} == {
        k: o.provider_id for k, o in mem.objects.items()
    }
    store.close()


def test_when_finishing_the_run_fails_too_the_first_error_is_reported(tmp_path: Path) -> None:
    store = FailingState(tmp_path / "state.db", fail_at=2, finish_fails=True)
    desired = desired_of(*(deployment(f"d{i}") for i in range(4)))
    with pytest.raises(StateError, match="database or disk is full"):
        apply(store, MemoryProvider(), desired, parallelism=1)
    assert store.lock_holder(ENV) is None


def test_when_releasing_the_lock_fails_after_an_error_the_error_is_reported(
    tmp_path: Path,
) -> None:
    store = FailingState(tmp_path / "state.db", fail_at=1, release_fails=True)
    with pytest.raises(StateError, match="database or disk is full"):
        apply(store, MemoryProvider(), desired_of(deployment("a")))
    (run,) = store.runs(ENV)
    assert run.outcome == "failed"


def test_a_failing_progress_callback_ends_the_run_failed(store: SQLiteState) -> None:
    def progress(res: ChangeResult) -> None:
        raise RuntimeError("terminal went away")

    with pytest.raises(RuntimeError, match="terminal went away"):
        apply(store, MemoryProvider(), desired_of(deployment("a")), progress=progress)
    (run,) = store.runs(ENV)
    assert run.outcome == "failed"
    assert run.details["error"] == "RuntimeError: terminal went away"
    assert store.lock_holder(ENV) is None


def test_ctrl_c_ends_the_run_interrupted_after_the_changes_under_way(store: SQLiteState) -> None:
    def progress(res: ChangeResult) -> None:
        raise KeyboardInterrupt

    mem = MemoryProvider(latency=0.01)
    desired = desired_of(*(deployment(f"d{i}") for i in range(10)))
    with pytest.raises(KeyboardInterrupt):
        apply(store, mem, desired, parallelism=2, progress=progress)
    (run,) = store.runs(ENV)
    assert run.outcome == "interrupted"
    # what had started finished and was recorded; no worker took another change
    started = mem.calls_of("create")
    assert set(store.applied(ENV)) == set(started)
    assert 1 <= len(started) <= worker_count(2, 10) < len(desired)
    assert store.lock_holder(ENV) is None


# -- the cycle guard ------------------------------------------------------------------


def test_changes_that_wait_on_each_other_are_refused_before_anything_runs(
    store: SQLiteState,
) -> None:
    a, b = deployment("a"), deployment("b")
    plan = EnvironmentPlan(
        ENV,
        0,
        False,
        [
            Change("create", a.key, "mem", None, a.body(), depends_on=[b.key]),
            Change("create", b.key, "mem", None, b.body(), depends_on=[a.key]),
        ],
    )
    mem = MemoryProvider()
    with pytest.raises(ReconcilerError, match="wait on each other"):
        apply(store, mem, desired_of(a, b), plan)
    assert mem.calls == []
    (run,) = store.runs(ENV)
    assert run.outcome == "failed" and "wait on each other" in run.details["error"]
    assert store.lock_holder(ENV) is None


# -- public helpers -------------------------------------------------------------------


def test_instance_from_record_round_trips_a_body() -> None:
    inst = Instance(ENV, "Deployment", "chat", "mem", {"model": "m"}, labels={"team": "x"})
    rec = AppliedRecord(
        environment=ENV,
        kind="Deployment",
        name="chat",
        provider="mem",
        provider_id="id-1",
        spec=inst.body(),
        spec_hash=inst.hash(),
        secret_fingerprints={},
        commit=None,
        run_id="r",
        applied_at=datetime.now(UTC),
    )
    back = instance_from_record(rec)
    assert back.body() == inst.body() and back.hash() == inst.hash()


def test_memory_provider_health_sequence_and_faults() -> None:
    mem = MemoryProvider()
    d = deployment("chat")
    assert mem.status("Deployment", "chat", ENV, None).health == "Missing"
    mem.create(d)
    mem.set_health(d.key, ["Progressing", "Healthy"])
    got = [mem.status("Deployment", "chat", ENV, None).health for _ in range(3)]
    assert got == ["Progressing", "Healthy", "Healthy"]
    mem.fail(d.key, "read", times=2)
    for _ in range(2):
        with pytest.raises(ProviderError):
            mem.read("Deployment", "chat", ENV, None)
    assert mem.read("Deployment", "chat", ENV, None) is not None


# -- through the CLI: --rollback-on-failure with the local provider --------------------

REPO_DEPLOYMENT = """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: %(name)s}
spec:
  environments: [dev]
  provider: registry
  model: %(model)s
  endpoint: /%(name)s
"""


def _write_models(repo: Path, model: str) -> None:
    write_files(
        repo,
        {
            f"manifests/{n}.yaml": REPO_DEPLOYMENT % {"name": n, "model": model}
            for n in ("alpha", "beta")
        },
    )
    commit_all(repo, f"models {model}")


def test_cli_rollback_on_failure_restores_the_registry_and_the_state(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    write_files(repo, {"manifests/env.yaml": REPO_ENV, ".gitignore": ".reconciler/\n"})
    _write_models(repo, "gpt-4o")
    assert run_cli(["--repo", str(repo), "apply"]).code == 0
    _write_models(repo, "gpt-4o-mini")
    registry = repo / ".reconciler" / "local-registry.db"
    with sqlite3.connect(registry) as db:  # beta vanishes behind reconciler's back
        db.execute("DELETE FROM objects WHERE name = 'beta'")
    r = run_cli(["--repo", str(repo), "apply", "--rollback-on-failure"])
    assert r.code == 1, r.out + r.err
    assert "deployment.beta: failed" in r.out and "no longer exists" in r.out
    assert "restored 1 change(s)" in r.out
    with sqlite3.connect(registry) as db:
        rows = db.execute("SELECT name, body FROM objects").fetchall()
    assert [name for name, _ in rows] == ["alpha"]
    assert json.loads(rows[0][1])["model"] == "gpt-4o"
    with sqlite3.connect(repo / ".reconciler" / "state.db") as db:
        (spec,) = db.execute("SELECT spec FROM applied WHERE name = 'alpha'").fetchone()
    assert json.loads(spec)["model"] == "gpt-4o"
    plan = run_cli(["--repo", str(repo), "plan"])
    assert "deployment.alpha" in plan.out  # still to be changed: the run was undone


def test_a_refusal_found_under_the_lock_names_the_refused_change(tmp_path: Path) -> None:
    """Between plan and lock another run recorded `ghost`; deleting it in a protected
    environment is refused, and the error says so (not the first change's verdict)."""
    from reconciler.config import load_settings
    from reconciler.engine.apply import ApplyRequest, run_apply
    from reconciler.session import Session

    repo = init_repo(tmp_path / "repo")
    protected = REPO_ENV.replace("{description: test}", "{description: test, protected: true}")
    write_files(repo, {"manifests/env.yaml": protected, ".gitignore": ".reconciler/\n"})
    _write_models(repo, "gpt-4o")
    ghost = Instance(ENV, "Deployment", "ghost", "registry", {"model": "m"})

    class Moving(SQLiteState):
        @contextmanager
        def lock(self, env: str, run_id: str, *, break_lock: bool = False) -> Iterator[LockInfo]:
            other = RunRecord(
                id="other",
                environment=ENV,
                commit=None,
                trigger="apply",
                started_at=datetime.now(UTC),
                finished_at=None,
                outcome="running",
            )
            self.begin_run(other)
            rec = AppliedRecord(
                environment=ENV,
                kind="Deployment",
                name="ghost",
                provider="registry",
                provider_id=None,
                spec=ghost.body(),
                spec_hash=ghost.hash(),
                secret_fingerprints={},
                commit=None,
                run_id="other",
                applied_at=datetime.now(UTC),
            )
            change = ChangeRecord(
                key=ghost.key,
                action="create",
                outcome="applied",
                error=None,
                provider_id=None,
                before_hash=None,
                after_hash=ghost.hash(),
            )
            self.record_change("other", change, rec, None)
            self.finish_run("other", "applied")
            with super().lock(env, run_id, break_lock=break_lock) as info:
                yield info

    settings = load_settings(repo, env={})
    store = Moving(repo / ".reconciler" / "state.db", env={})
    with pytest.raises(ReconcilerError, match=r"deleting deployment\.ghost needs --allow-delete"):
        run_apply(Session.start(settings), store, ApplyRequest())
    assert store.lock_holder(ENV) is None
    store.close()


def test_the_executor_and_its_users_import_no_private_names() -> None:
    from test_approvals_imports import private_imports

    root = Path(__file__).resolve().parent.parent / "reconciler"
    files = [
        *sorted((root / "executor").glob("*.py")),
        root / "drift.py",
        *sorted((root / "providers").glob("*.py")),
    ]
    files += sorted((root / "commands").glob("*.py"))
    assert [v for f in files for v in private_imports(f)] == []
