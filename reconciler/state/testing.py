"""The state contract, shipped as code (like Terraform's statemgr `TestFull` and
backend `TestBackendStates`/`TestBackendStateLocks`), in two suites:

- `CHECKS`: the semantics the rest of reconciler relies on, run against the one `Store`
  over each backend: serials, applied records and their index, runs and changes,
  locks (exclusion, stale takeover, `--break-lock` stopping the old holder), the
  fingerprint key from the injected environment, read-only opens, atomicity, imports;
- `BACKEND_CHECKS`: what a backend itself must do: a transaction is all or nothing,
  a lock excludes every other holder until released or broken.

A new backend implements `backend.Backend` and runs both (tests/test_state_contract.py
runs them for SQLite, git and PostgreSQL)::

    from functools import partial
    from reconciler.state import open_backend, open_state, testing

    @pytest.mark.parametrize("check", testing.CHECKS, ids=testing.check_name)
    def test_store(check, tmp_path):
        check(partial(open_state, "sqlite:///.reconciler/state.db", repo_root=tmp_path))

    @pytest.mark.parametrize("check", testing.BACKEND_CHECKS, ids=testing.check_name)
    def test_backend(check, tmp_path):
        check(partial(open_backend, "sqlite:///.reconciler/state.db", repo_root=tmp_path))

A factory opens a new store (or backend) on one and the same state each time it is
called (the state starts empty for each check), with the keyword arguments `env` (stores
only) and `read_only` of `open_state`. A store factory must be picklable (a
`functools.partial` of `open_state` is): two checks open it in another process, one
that dies holding a lock and one that holds it alive in another pid namespace. Checks
close every store they open; they skip (unittest.SkipTest) only what the machine cannot
do (no `unshare`).
"""

from __future__ import annotations

import functools
import itertools
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import unittest
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from reconciler.errors import LockedError, StateError, StateMovedError
from reconciler.instances import InstanceKey
from reconciler.state.backend import Backend, LockLost, MissingRun, RunQuery, Tx, Write
from reconciler.state.base import (
    FINGERPRINT_KEY_VAR,
    AppliedRecord,
    ChangeRecord,
    EnvironmentState,
    LockInfo,
    RunRecord,
    StateStore,
    fingerprint,
    pid_alive,
    this_process,
)
from reconciler.vocabulary import Action, ChangeOutcome, RunOutcome

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
E = TypeVar("E", bound=StateError)
X = TypeVar("X", bound=Exception)


class StoreFactory(Protocol):
    """Opens a new store on the state under test (see the module docstring)."""

    def __call__(self, *, env: Mapping[str, str], read_only: bool = False) -> StateStore: ...


class Stores:
    """What a check gets: opens stores through the factory (with an empty environment
    unless told) and closes every one when the check ends."""

    def __init__(self, factory: StoreFactory) -> None:
        self.factory = factory
        self._opened: list[StateStore] = []

    def __call__(
        self, *, env: Mapping[str, str] | None = None, read_only: bool = False
    ) -> StateStore:
        store = self.factory(env={} if env is None else env, read_only=read_only)
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self._opened:
            store.close()


Check = Callable[[StoreFactory], None]
#: Every check of the contract, in order.
CHECKS: list[Check] = []


def check_name(check: Check) -> str:
    """A pytest id for a check."""
    return check.__name__.removeprefix("check_")


def _contract(body: Callable[[Stores], None]) -> Check:
    @functools.wraps(body)
    def check(factory: StoreFactory) -> None:
        stores = Stores(factory)
        try:
            body(stores)
        finally:
            stores.close_all()

    CHECKS.append(check)
    return check


def run_all(factory: StoreFactory) -> None:
    """Every check, in order (for a quick run outside pytest)."""
    for check in CHECKS:
        check(factory)


# -- records ---------------------------------------------------------------------------


def _run(run_id: str, env: str = "dev", *, at: datetime = T0, commit: str = "c1") -> RunRecord:
    return RunRecord(
        id=run_id,
        environment=env,
        commit=commit,
        trigger="apply",
        started_at=at,
        finished_at=None,
        outcome="running",
        approvers=["alice"],
    )


def _applied(name: str, run_id: str, env: str = "dev", model: str = "gpt-4o") -> AppliedRecord:
    spec = {"name": name, "environment": env, "model": model, "env": {"K": {"secretEnv": "K"}}}
    return AppliedRecord(
        env, "Deployment", name, "local", f"id-{name}", spec, f"h-{name}",
        {"K": fingerprint(b"k", "v")}, "c1", run_id, T0,
    )  # fmt: skip


def _change(
    name: str, action: Action = "create", outcome: ChangeOutcome = "applied", env: str = "dev"
) -> ChangeRecord:
    key = InstanceKey(env, "Deployment", name)
    return ChangeRecord(key, action, outcome, None, f"id-{name}", None, "h")


def _apply(store: StateStore, run_id: str, names: list[str], env: str = "dev") -> None:
    with store.lock(env, run_id):
        store.begin_run(_run(run_id, env))
        for n in names:
            store.record_change(run_id, _change(n, env=env), _applied(n, run_id, env), None)
        store.finish_run(run_id, "applied")


def _refused(write: Callable[[], object], error: type[E], why: str) -> E:
    """The error `write` raised; AssertionError(`why`) when it succeeded."""
    return _raised(write, error, why)


def _raised(write: Callable[[], object], error: type[X], why: str) -> X:
    try:
        write()
    except error as e:
        return e
    raise AssertionError(why)


def _holding(store: StateStore, env: str, run_id: str) -> AbstractContextManager[Any]:
    """A lock entered and never left (its holder went away without cleaning up). Keep
    the result referenced: a collected context manager releases its lock."""
    held = store.lock(env, run_id)
    held.__enter__()
    return held


# -- serials, applied, runs ------------------------------------------------------------


@_contract
def check_empty_store(make_store: Stores) -> None:
    s = make_store()
    assert s.serial("dev") == 0
    assert s.applied("dev") == {}
    assert s.runs() == []
    assert s.environments() == []
    assert s.run("nope") is None
    assert s.lock_holder("dev") is None
    assert s.serials() == {}


@_contract
def check_record_change_updates_applied_serial_and_run(make_store: Stores) -> None:
    s = make_store()
    s.begin_run(_run("r1"))
    s.record_change("r1", _change("a"), _applied("a", "r1"), None)
    s.record_change("r1", _change("b"), _applied("b", "r1"), None)
    assert s.serial("dev") == 2
    assert set(s.applied("dev")) == {("dev", "Deployment", "a"), ("dev", "Deployment", "b")}
    rec = s.applied("dev")[InstanceKey("dev", "Deployment", "a")]
    assert rec.spec["env"] == {"K": {"secretEnv": "K"}}
    assert rec.provider_id == "id-a" and rec.applied_at == T0
    s.finish_run("r1", "applied", {"note": 1})
    run = s.run("r1")
    assert run is not None and run.outcome == "applied" and run.finished_at is not None
    assert [c.key[2] for c in run.changes] == ["a", "b"]
    assert run.details == {"note": 1} and run.approvers == ["alice"]
    assert s.serials() == {"dev": 2}
    assert s.environments() == ["dev"]


@_contract
def check_failed_change_is_recorded_without_touching_applied(make_store: Stores) -> None:
    s = make_store()
    s.begin_run(_run("r1"))
    s.record_change("r1", _change("a", outcome="failed"), None, None)
    assert s.serial("dev") == 0
    assert s.applied("dev") == {}
    run = s.run("r1")
    assert run is not None and [c.outcome for c in run.changes] == ["failed"]


@_contract
def check_delete_removes_applied(make_store: Stores) -> None:
    s = make_store()
    s.begin_run(_run("r1"))
    s.record_change("r1", _change("a"), _applied("a", "r1"), None)
    s.begin_run(_run("r2", at=T0 + timedelta(minutes=1)))
    s.record_change("r2", _change("a", "delete"), None, InstanceKey("dev", "Deployment", "a"))
    assert s.applied("dev") == {}
    assert s.serial("dev") == 2


@_contract
def check_state_persists_across_reopen(make_store: Stores) -> None:
    s = make_store()
    s.begin_run(_run("r1"))
    s.record_change("r1", _change("a"), _applied("a", "r1"), None)
    s.close()
    s2 = make_store()
    assert list(s2.applied("dev")) == [("dev", "Deployment", "a")]
    assert s2.serial("dev") == 1


@_contract
def check_runs_newest_first_filtered_and_limited(make_store: Stores) -> None:
    s = make_store()
    for i in range(5):
        env = "dev" if i % 2 == 0 else "prod"
        s.begin_run(_run(f"r{i}", env, at=T0 + timedelta(minutes=i), commit=f"c{i % 2}"))
    assert [r.id for r in s.runs()] == ["r4", "r3", "r2", "r1", "r0"]
    assert [r.id for r in s.runs("dev")] == ["r4", "r2", "r0"]
    assert [r.id for r in s.runs(limit=2)] == ["r4", "r3"]
    assert [r.id for r in s.runs_for_commit("c1")] == ["r3", "r1"]


@_contract
def check_policy_and_diffs_are_kept_and_the_last_applied_run_found(make_store: Stores) -> None:
    """The gate judges by the policy the last applied run recorded; history shows each
    change's diff without the manifests."""
    s = make_store()
    assert s.last_applied_run("dev") is None
    policy = {"environment": {"approvals": {"required": 2}}, "approvals": {"source": "github"}}
    diff = [{"path": "model", "before": "gpt-4o-mini", "after": "gpt-4o"}]
    outcomes: tuple[RunOutcome, ...] = ("applied", "applied", "failed")
    for i, outcome in enumerate(outcomes):
        run = _run(f"r{i}", at=T0 + timedelta(minutes=i), commit=f"c{i}")
        run.policy = {**policy, "n": i}
        s.begin_run(run)
        change = ChangeRecord(
            InstanceKey("dev", "Deployment", "a"), "update", "applied", None, "id-a", "h0",
            "h1", diff=diff,
        )  # fmt: skip
        s.record_change(run.id, change, _applied("a", run.id), None)
        s.finish_run(run.id, outcome)
    s.begin_run(_run("other", "prod", at=T0 + timedelta(minutes=9)))
    s.finish_run("other", "applied")
    heal = _run("healed", at=T0 + timedelta(minutes=10), commit="c-head")
    heal.trigger = "heal"  # puts recorded specs back: never the recorded state's commit
    s.begin_run(heal)
    s.finish_run("healed", "applied")
    last = s.last_applied_run("dev")
    assert last is not None and last.id == "r1" and last.commit == "c1"
    assert last.policy == {**policy, "n": 1}
    first = s.run("r0")
    assert first is not None and first.changes[0].diff == diff
    unpoliced = s.run("other")
    assert unpoliced is not None and unpoliced.policy is None


@_contract
def check_environments_are_independent(make_store: Stores) -> None:
    s = make_store()
    s.begin_run(_run("r1", "prod"))
    s.record_change(
        "r1",
        ChangeRecord(
            InstanceKey("prod", "Deployment", "a"), "create", "applied", None, "x", None, "h"
        ),
        _applied("a", "r1", env="prod"),
        None,
    )
    assert s.serial("dev") == 0 and s.serial("prod") == 1
    assert s.applied("dev") == {}


@_contract
def check_interleaved_runs_keep_each_runs_changes_in_order(make_store: Stores) -> None:
    """Two runs (two environments) written turn about, then one of them again after
    the store is reopened: each run lists exactly its own changes, in the order made."""
    s = make_store()
    s.begin_run(_run("r-dev", "dev"))
    s.begin_run(_run("r-prod", "prod"))
    for i in range(3):
        for run_id, env in (("r-dev", "dev"), ("r-prod", "prod")):
            s.record_change(run_id, _change(f"{env}{i}", env=env), None, None)
    s.close()
    s = make_store()
    s.record_change("r-dev", _change("dev3"), None, None)
    for run_id, env, count in (("r-dev", "dev", 4), ("r-prod", "prod", 3)):
        run = s.run(run_id)
        assert run is not None
        assert [c.key.name for c in run.changes] == [f"{env}{i}" for i in range(count)]


@_contract
def check_applied_by_keys_and_index(make_store: Stores) -> None:
    s = make_store()
    names = [f"d{i:02d}" for i in range(12)]
    _apply(s, "r1", names)
    with s.lock("dev", "r2"):
        s.begin_run(_run("r2", at=T0 + timedelta(minutes=1)))
        gone = InstanceKey("dev", "Deployment", "d03")
        s.record_change("r2", _change("d03", action="delete"), None, gone)
    index = s.applied_index("dev")
    assert len(index) == 11 and gone not in index
    assert index[InstanceKey("dev", "Deployment", "d07")].spec_hash == "h-d07"
    wanted = [
        InstanceKey("dev", "Deployment", "d07"),
        gone,
        InstanceKey("prod", "Deployment", "d07"),
    ]
    assert list(s.applied("dev", keys=wanted)) == [("dev", "Deployment", "d07")]
    assert s.applied("dev", keys=[]) == {}
    assert list(s.applied("dev")) == sorted(index)


@_contract
def check_applied_of_one_key(make_store: Stores) -> None:
    """The executor asks per change: one key in, that record (or nothing) out."""
    s = make_store()
    _apply(s, "r1", ["a", "b", "c"])
    one = s.applied("dev", keys=[InstanceKey("dev", "Deployment", "b")])
    assert list(one) == [("dev", "Deployment", "b")]
    b = InstanceKey("dev", "Deployment", "b")
    assert one[b] == s.applied("dev")[b]
    assert s.applied("dev", keys=[InstanceKey("dev", "Deployment", "zz")]) == {}
    assert s.applied("prod", keys=[InstanceKey("dev", "Deployment", "b")]) == {}
    many = [InstanceKey("dev", "Deployment", f"n{i}") for i in range(1000)]
    assert list(s.applied("dev", keys=[*many, InstanceKey("dev", "Deployment", "c")])) == [
        ("dev", "Deployment", "c")
    ]


@_contract
def check_parallel_threads_record_under_one_lock(make_store: Stores) -> None:
    s = make_store()
    with s.lock("dev", "r1"):
        s.begin_run(_run("r1"))

        def worker(i: int) -> None:
            for j in range(3):
                n = f"t{i}-{j}"
                s.record_change("r1", _change(n), _applied(n, "r1"), None)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(s.applied("dev")) == 18 and s.serial("dev") == 18
    run = s.run("r1")
    assert run is not None and len(run.changes) == 18


# -- atomicity -------------------------------------------------------------------------


@_contract
def check_refused_writes_leave_nothing(make_store: Stores) -> None:
    """A write that fails changes nothing: no half-recorded change, no serial bump."""
    s = make_store()
    _apply(s, "r1", ["a"])
    before = (s.serials(), s.applied("dev"), [(r.id, len(r.changes)) for r in s.runs()])
    _refused(
        lambda: s.record_change("nope", _change("b"), _applied("b", "nope"), None),
        StateError,
        "record_change of an unknown run must raise StateError",
    )
    _refused(lambda: s.begin_run(_run("r1")), StateError, "a run id was recorded twice")
    after = make_store()
    assert (
        after.serials(),
        after.applied("dev"),
        [(r.id, len(r.changes)) for r in after.runs()],
    ) == before


# -- import (state migrate) ------------------------------------------------------------


def _export(store: StateStore, env: str) -> EnvironmentState:
    return EnvironmentState(
        env, store.serial(env), list(store.applied(env).values()), store.runs(env)[::-1]
    )


def _renamed(state: EnvironmentState, env: str) -> EnvironmentState:
    """`state` as another environment's (run ids prefixed: they are unique per state)."""

    def key(k: InstanceKey) -> InstanceKey:
        return InstanceKey(env, k.kind, k.name)

    return EnvironmentState(
        env,
        state.serial,
        [replace(r, environment=env, run_id=f"{env}-{r.run_id}") for r in state.applied],
        [
            replace(
                run,
                id=f"{env}-{run.id}",
                environment=env,
                changes=[replace(c, key=key(c.key)) for c in run.changes],
            )
            for run in state.runs
        ],
    )


@_contract
def check_import_environment_copies_it_whole_and_only_once(make_store: Stores) -> None:
    """`state migrate` writes an environment as another backend recorded it: serial,
    applied records, runs with their changes, policies and diffs, timestamps as they were."""
    s = make_store()
    _apply(s, "r1", ["a", "b", "c"])
    with s.lock("dev", "r2"):
        run = _run("r2", at=T0 + timedelta(minutes=1), commit="c2")
        run.policy = {"environment": {"approvals": {"required": 1}}}
        s.begin_run(run)
        diff = [{"path": "model", "before": "gpt-4o", "after": "gpt-4o-mini"}]
        change = replace(_change("a", "update"), diff=diff, at=T0 + timedelta(minutes=2))
        s.record_change("r2", change, _applied("a", "r2", model="gpt-4o-mini"), None)
        s.record_change("r2", _change("b", "delete"), None, InstanceKey("dev", "Deployment", "b"))
        s.record_change("r2", _change("c", "update", "failed"), None, None)
        s.finish_run("r2", "failed", {"why": "c"})
    source = _export(s, "dev")
    copy = _renamed(source, "qa")
    with s.lock("qa", "migrate"):  # migrate holds the target's lock while it writes
        s.import_environment(copy)
    for store in (s, make_store(read_only=True)):
        assert store.serial("qa") == source.serial == 5
        assert list(store.applied("qa").values()) == copy.applied
        assert store.runs("qa") == copy.runs[::-1]
        r2 = store.run("qa-r2")
        assert r2 is not None and r2.changes[0].diff == diff and r2.details == {"why": "c"}
        assert r2.policy == run.policy and r2.finished_at == source.runs[1].finished_at
        last = store.last_applied_run("qa")
        assert last is not None and last.id == "qa-r1"
        assert "qa" in store.environments() and store.lock_holder("qa") is None
    before = (s.serials(), [(r.id, len(r.changes)) for r in s.runs()])
    for env in ("qa", "dev"):
        e = _refused(
            lambda env=env: s.import_environment(_renamed(source, env)),  # type: ignore[misc]
            StateError,
            f"an import into {env!r}, which has state, was accepted",
        )
        assert f"already has state for environment {env!r}" in e.message
    assert (s.serials(), [(r.id, len(r.changes)) for r in s.runs()]) == before
    ro = make_store(read_only=True)
    e = _refused(lambda: ro.import_environment(copy), StateError, "a read-only store wrote")
    assert "read-only" in e.message


@_contract
def check_import_fingerprint_key_adopts_a_key_nothing_used_yet(make_store: Stores) -> None:
    s = make_store()
    key, other = b"k" * 32, b"o" * 32
    s.import_fingerprint_key(key)
    assert s.fingerprint_key(create=False) == key and s.fingerprint_key() == key
    s.import_fingerprint_key(other)  # no record was fingerprinted with `key`: replaced
    assert make_store().fingerprint_key(create=False) == other
    _apply(s, "r1", ["a"])
    s.import_fingerprint_key(other)
    e = _refused(lambda: s.import_fingerprint_key(key), StateError, "a used key was replaced")
    assert "another fingerprint key" in e.message
    assert make_store().fingerprint_key(create=False) == other
    ro = make_store(read_only=True)
    e = _refused(lambda: ro.import_fingerprint_key(other), StateError, "a read-only store wrote")
    assert "read-only" in e.message


# -- locks -----------------------------------------------------------------------------


@_contract
def check_lock_excludes_second_holder_and_names_it(make_store: Stores) -> None:
    s = make_store()
    with s.lock("dev", "r1") as info:
        assert info.run_id == "r1"
        assert s.lock_holder("dev") == info
        other = make_store()
        e = _refused(
            lambda: other.lock("dev", "r2").__enter__(), LockedError, "a second lock of 'dev'"
        )
        assert "run r1" in e.message and f"pid {os.getpid()}" in e.message
        assert e.exit_code == 4
        # another environment is free
        with other.lock("staging", "r3"):
            pass
    with s.lock("dev", "r4"):
        pass
    assert s.lock_holder("dev") is None


@_contract
def check_break_lock_takes_over_and_marks_run_interrupted(make_store: Stores) -> None:
    s = make_store()
    s.begin_run(_run("r1"))
    holder = _holding(s, "dev", "r1")
    with make_store().lock("dev", "r2", break_lock=True) as info:
        assert info.run_id == "r2"
    run = s.run("r1")
    assert run is not None and run.outcome == "interrupted"
    del holder


@_contract
def check_broken_lock_stops_the_old_holder(make_store: Stores) -> None:
    s1, s2 = make_store(), make_store()
    with s1.lock("dev", "r1"):
        s1.begin_run(_run("r1"))
        s1.record_change("r1", _change("a"), _applied("a", "r1"), None)
        with s2.lock("dev", "r2", break_lock=True):
            writes: list[Callable[[], object]] = [
                lambda: s1.record_change("r1", _change("b"), _applied("b", "r1"), None),
                lambda: s1.begin_run(_run("r1b")),
                lambda: s1.finish_run("r1", "applied"),
            ]
            for write in writes:
                e = _refused(write, StateMovedError, "the old holder wrote after a break-lock")
                assert "lock of 'dev' held by run r1 was broken" in e.message
                assert "now held by run r2" in e.message and e.exit_code == 4
        run = s2.run("r1")
        assert run is not None and run.outcome == "interrupted" and len(run.changes) == 1
        assert s2.run("r1b") is None
        with s2.lock("dev", "r3"):  # r1 leaving its block must not release r3's lock
            pass
    assert set(s2.applied("dev")) == {("dev", "Deployment", "a")}
    assert s2.serial("dev") == 1


@_contract
def check_a_broken_lock_fails_the_check_before_any_write(make_store: Stores) -> None:
    """`check_lock` (asked before each provider call) sees a --break-lock at once."""
    s1, s2 = make_store(), make_store()
    s1.check_lock("dev")  # not held: nothing to check
    with s1.lock("dev", "r1"):
        s1.begin_run(_run("r1"))
        s1.check_lock("dev")
        s1.check_lock("staging")
        with s2.lock("dev", "r2", break_lock=True):
            e = _refused(lambda: s1.check_lock("dev"), StateMovedError, "a broken lock passed")
            assert "lock of 'dev' held by run r1 was " in e.message and e.exit_code == 4
            s2.check_lock("dev")
    run = s2.run("r1")
    assert run is not None and run.outcome == "interrupted" and run.changes == []


@_contract
def check_lock_of_a_dead_process_is_taken_over(make_store: Stores) -> None:
    child = _Child(make_store.factory, "die")
    assert child.wait() == 0, child.stderr()
    s = make_store()
    holder = s.lock_holder("dev")
    assert holder is not None and holder.run_id == "dead"
    with s.lock("dev", "alive"):
        pass
    run = s.run("dead")
    assert run is not None and run.outcome == "interrupted"


@_contract
def check_live_holder_in_another_pid_namespace_is_not_taken_over(make_store: Stores) -> None:
    """Two containers sharing a hostname and the state: the other one's pid means nothing
    here (it may even be dead here), so only --break-lock takes its lock, and then its
    next write fails instead of recording on."""
    target = next(p for p in range(2, 1 << 15) if not pid_alive(p))
    with _Child(make_store.factory, "hold", pid_namespace_pid=target) as child:
        line = child.readline()
        assert line.startswith("locked "), child.stderr()
        assert int(line.split()[1]) == target and not pid_alive(target)
        s = make_store()
        holder = s.lock_holder("dev")
        assert holder is not None and holder.run_id == "elsewhere" and holder.pid == target
        e = _refused(
            lambda: s.lock("dev", "mine").__enter__(),
            LockedError,
            "a live holder in another pid namespace was taken over",
        )
        assert "run elsewhere" in e.message and e.exit_code == 4
        with s.lock("dev", "mine", break_lock=True):
            child.send("write")
            assert child.readline() == "StateMovedError 4", child.stderr()
        run = s.run("elsewhere")
        assert run is not None and run.outcome == "interrupted" and run.changes == []
        assert s.applied("dev") == {} and s.serial("dev") == 0


@_contract
def check_what_was_recorded_survives_kill_9(make_store: Stores) -> None:
    """Every `record_change` that returned is there after the process is killed (the
    executor records each change before starting the next; a re-run builds on that)."""
    with _Child(make_store.factory, "record") as child:
        acknowledged: list[str] = []
        while len(acknowledged) < 25:
            line = child.readline()
            assert line.startswith("recorded "), child.stderr()
            acknowledged.append(line.split()[1])
        child.kill()
        acknowledged += [ln.split()[1] for ln in child.remaining_lines()]
    s = make_store()
    names = {k.name for k in s.applied("dev")}
    assert set(acknowledged) <= names, sorted(set(acknowledged) - names)
    run = s.run("recorder")
    assert run is not None and len(run.changes) >= len(acknowledged)
    assert s.serial("dev") == len(names) >= len(acknowledged)


# -- fingerprint key -------------------------------------------------------------------


@_contract
def check_fingerprint_key_is_made_once_and_stable(make_store: Stores) -> None:
    s = make_store()
    assert s.fingerprint_key(create=False) is None
    k1 = s.fingerprint_key()
    assert k1 is not None and len(k1) == 32 and s.fingerprint_key() == k1
    assert s.fingerprint_key(create=False) == k1
    assert make_store().fingerprint_key(create=False) == k1
    assert fingerprint(k1, "secret") != fingerprint(k1, "other")
    assert "secret" not in fingerprint(k1, "secret")


@_contract
def check_fingerprint_key_comes_from_the_injected_environment(make_store: Stores) -> None:
    stored = make_store().fingerprint_key()
    assert make_store(env={FINGERPRINT_KEY_VAR: "from-env"}).fingerprint_key() == b"from-env"
    with _process_env(FINGERPRINT_KEY_VAR, "from-os-environ"):
        assert make_store().fingerprint_key() == stored
        assert make_store(read_only=True).fingerprint_key(create=False) == stored
        fresh_env = make_store(env={FINGERPRINT_KEY_VAR: "injected"})
        assert fresh_env.fingerprint_key(create=False) == b"injected"


@contextmanager
def _process_env(name: str, value: str) -> Iterator[None]:
    """The process environment, which stores must ignore, set for a moment."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


# -- read-only -------------------------------------------------------------------------


@_contract
def check_read_only_store_reads_and_never_writes(make_store: Stores) -> None:
    ro = make_store(read_only=True)
    assert ro.read_only
    assert ro.serial("dev") == 0 and ro.applied("dev") == {} and ro.runs() == []
    assert ro.applied_index("dev") == {} and ro.environments() == []
    assert ro.fingerprint_key(create=False) is None and ro.lock_holder("dev") is None
    refused: list[Callable[[], object]] = [
        lambda: ro.fingerprint_key(),
        lambda: ro.begin_run(_run("r0")),
        lambda: ro.lock("dev", "r0").__enter__(),
    ]
    for write in refused:
        assert "read-only" in _refused(write, StateError, "a read-only store wrote").message
    rw = make_store()
    assert rw.environments() == [] and rw.fingerprint_key(create=False) is None
    _apply(rw, "r1", ["a"])
    key = rw.fingerprint_key()
    ro2 = make_store(read_only=True)
    assert ro2.serial("dev") == 1 and list(ro2.applied("dev")) == [("dev", "Deployment", "a")]
    assert ro2.fingerprint_key(create=False) == key
    run = ro2.run("r1")
    assert run is not None and run.outcome == "applied" and len(run.changes) == 1
    refused = [
        lambda: ro2.record_change("r1", _change("b"), _applied("b", "r1"), None),
        lambda: ro2.finish_run("r1", "failed"),
    ]
    for write in refused:
        assert "read-only" in _refused(write, StateError, "a read-only store wrote").message
    check = make_store()
    assert check.serial("dev") == 1 and check.applied("dev").keys() == {("dev", "Deployment", "a")}
    run = check.run("r1")
    assert run is not None and run.outcome == "applied"


# -- the backend suite -----------------------------------------------------------------


class BackendFactory(Protocol):
    """Opens a new backend on the state under test."""

    def __call__(self, *, read_only: bool = False) -> Backend: ...


BackendCheck = Callable[[BackendFactory], None]
#: Every check of the backend suite, in order.
BACKEND_CHECKS: list[BackendCheck] = []


def _backend_check(body: Callable[[Callable[[], Backend]], None]) -> BackendCheck:
    @functools.wraps(body)
    def check(factory: BackendFactory) -> None:
        opened: list[Backend] = []

        def make() -> Backend:
            opened.append(factory())
            return opened[-1]

        try:
            body(make)
        finally:
            for backend in opened:
                backend.close()

    BACKEND_CHECKS.append(check)
    return check


class _Abandoned(Exception):
    """Raised inside a transaction to make it fail."""


def _recorded(backend: Backend) -> tuple[object, ...]:
    return (backend.serials(), backend.applied("dev", None), backend.runs(RunQuery()))


@_backend_check
def check_a_transaction_is_all_or_nothing(make: Callable[[], Backend]) -> None:
    b = make()
    applied = _applied("a", "r1")

    def write(fail: bool) -> Callable[[Tx], str]:
        def body(tx: Tx) -> str:
            tx.add_run(_run("r1"))
            tx.append_change("r1", _change("a"), T0)
            tx.put_applied(applied)
            tx.bump_serial("dev")
            if fail:
                raise _Abandoned
            return "done"

        return body

    _raised(lambda: b.transact(Write("w", "w"), write(True)), _Abandoned, "not raised")
    assert _recorded(b) == ({}, {}, [])
    assert b.transact(Write("w", "w"), write(False)) == "done"
    for seen in (b, make()):
        assert seen.serial("dev") == 1 and list(seen.applied("dev", None).values()) == [applied]
        (run,) = seen.runs(RunQuery())
        assert run.id == "r1" and [c.key.name for c in run.changes] == ["a"]
        assert run.changes[0].at == T0
    before = _recorded(b)

    def orphan(tx: Tx) -> None:
        tx.put_applied(_applied("b", "nope"))
        tx.append_change("nope", _change("b"), T0)
        tx.bump_serial("dev")

    _raised(lambda: b.transact(Write("w", "w"), orphan), MissingRun, "a change without a run")
    assert _recorded(make()) == before


@_backend_check
def check_a_lock_excludes_others_until_released_or_broken(make: Callable[[], Backend]) -> None:
    a, b = make(), make()
    taken: list[str] = []

    def taken_over(tx: Tx, holder: LockInfo) -> None:
        taken.append(holder.run_id)

    first, second = this_process("dev", "r1"), this_process("dev", "r2")
    a.lock(first, break_lock=False, taken_over=taken_over)
    assert first.same_holder(b.holder("dev"))
    e = _refused(
        lambda: b.lock(second, break_lock=False, taken_over=taken_over), LockedError, "2 holders"
    )
    assert "run r1" in e.message and e.exit_code == 4
    other_env = this_process("prod", "r3")
    b.lock(other_env, break_lock=False, taken_over=taken_over)  # another environment is free
    b.unlock(other_env)
    assert first.same_holder(a.check_lock(first)) and taken == []
    a.unlock(first)
    assert b.holder("dev") is None
    b.lock(second, break_lock=False, taken_over=taken_over)
    assert taken == []  # nobody was in the way
    third = this_process("dev", "r3")
    a.lock(third, break_lock=True, taken_over=taken_over)
    assert taken == ["r2"] and third.same_holder(b.holder("dev"))
    with suppress(LockLost):  # or the storage knows the lock is gone without reading it
        assert not second.same_holder(b.check_lock(second))
    b.unlock(second)  # not its lock any more: leaves third's
    assert third.same_holder(a.holder("dev"))
    a.unlock(third)
    assert a.holder("dev") is None


# -- other processes -------------------------------------------------------------------


class _Child:
    """Another process on the same state, in one of three modes:

    - `die`: takes the lock of 'dev' for run "dead" and exits without cleaning up;
    - `record`: records changes of run "recorder" until killed, printing
      `recorded <name>` after each;
    - `hold`: takes the lock for run "elsewhere" (in a new pid namespace, as pid
      `pid_namespace_pid`, when asked), prints `locked <pid>`, and on `write` tries to
      record a change and prints what happened."""

    def __init__(
        self, factory: StoreFactory, mode: str, *, pid_namespace_pid: int | None = None
    ) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="reconciler-contract-"))
        pickled = self._dir / "factory.pickle"
        pickled.write_bytes(pickle.dumps(factory))
        argv = [sys.executable, "-m", "reconciler.state.testing", mode, str(pickled)]
        if pid_namespace_pid is not None:
            unshare = shutil.which("unshare") or "unshare"
            probe = [unshare, "--user", "--map-root-user", "--pid", "--fork", "true"]
            if not _runs(probe):
                shutil.rmtree(self._dir, ignore_errors=True)
                raise unittest.SkipTest("needs `unshare` with user and pid namespaces")
            argv = [*probe[:-1], *argv, str(pid_namespace_pid)]
        self._err = open(self._dir / "stderr", "w+b")  # noqa: SIM115 (closed in close())
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            start_new_session=True,
        )

    def readline(self) -> str:
        assert self._proc.stdout is not None
        return self._proc.stdout.readline().strip()

    def send(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def remaining_lines(self) -> list[str]:
        """What it printed before it died (only after `kill`)."""
        assert self._proc.stdout is not None
        return [ln.strip() for ln in self._proc.stdout.read().splitlines() if ln.strip()]

    def kill(self) -> None:
        """SIGKILL to the whole process group: no cleanup of any kind runs."""
        with suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(60)

    def wait(self) -> int:
        return self._proc.wait(60)

    def stderr(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-4000:]

    def __enter__(self) -> _Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.kill()
        for stream in (self._proc.stdin, self._proc.stdout, self._err):
            if stream is not None:
                stream.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _runs(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _become_pid(target: int) -> None:
    """In a fresh pid namespace (this process is its pid 1), fork until a child gets
    `target`; that child returns, every other process waits for it and exits with it."""
    while True:
        pid = os.fork()
        if pid == 0:
            if os.getpid() == target:
                return
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if pid >= target:
            os._exit(os.waitstatus_to_exitcode(status) if pid == target else 3)


def _record_until_killed(store: StateStore) -> None:
    store.begin_run(_run("recorder"))
    held = _holding(store, "dev", "recorder")
    for i in itertools.count():
        name = f"k{i:06d}"
        store.record_change("recorder", _change(name), _applied(name, "recorder"), None)
        print(f"recorded {name}", flush=True)
    del held


def _child_main(argv: list[str]) -> None:
    mode, pickled = argv[0], argv[1]
    if len(argv) > 2:
        _become_pid(int(argv[2]))
    factory: StoreFactory = pickle.loads(Path(pickled).read_bytes())
    store = factory(env={})
    if mode == "record":
        _record_until_killed(store)
    run_id = "dead" if mode == "die" else "elsewhere"
    store.begin_run(_run(run_id))
    held = _holding(store, "dev", run_id)
    if mode == "die":
        os._exit(0)  # like kill -9: no cleanup runs
    print(f"locked {os.getpid()}", flush=True)
    for line in sys.stdin:
        if line.strip() == "write":
            try:
                store.record_change(run_id, _change("late"), _applied("late", run_id), None)
                print("recorded", flush=True)
            except StateError as e:
                print(f"{type(e).__name__} {e.exit_code}", flush=True)
    os._exit(0 if held else 1)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
