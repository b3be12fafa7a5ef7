"""A lost lock stops the run before its next provider call, not only at its next state
write: the executor asks `StateStore.check_lock` before every provider write. Against a
real PostgreSQL whose lock session is ended between two changes, and a real SQLite
state whose lock another run breaks; the in-memory provider counts the calls made."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from executor_world import ENV, apply, desired_of
from pgserver import PgServer

from reconciler.errors import StateMovedError
from reconciler.executor import ChangeResult
from reconciler.instances import Instance
from reconciler.providers.testing import MemoryProvider
from reconciler.state import open_state
from reconciler.state.postgres import LOCK_SESSION_KEEPALIVES, lock_session_params
from reconciler.state.sqlite import SQLiteState


def deployment(name: str) -> Instance:
    return Instance(ENV, "Deployment", name, "mem", {"model": "gpt-4o", "endpoint": f"/{name}"})


def schedule(name: str, dep: Instance) -> Instance:
    spec = {"deployment": dep.name, "cron": "0 * * * *"}
    return Instance(ENV, "Schedule", name, "mem", spec, depends_on=(dep.key,))


#: d0 first; s1 and s2 become ready only once d0 is settled (and reported), so whatever
#: the progress callback does at d0's report happens between the two provider calls.
D0 = deployment("d0")
DESIRED = desired_of(D0, schedule("s1", D0), schedule("s2", D0))


def _changes(store: Any, run_id: str) -> dict[str, tuple[str, str | None]]:
    run = store.run(run_id)
    assert run is not None
    return {c.key.name: (c.outcome, c.error) for c in run.changes}


def test_a_lost_postgres_session_stops_the_run_before_its_next_provider_call(
    tmp_path: Path, postgres_url: str, postgres_server: PgServer
) -> None:
    name = "lost-lock-" + secrets.token_hex(4)
    store = open_state(f"{postgres_url}&application_name={name}", repo_root=tmp_path, env={})
    ended: list[tuple[Any, ...]] = []

    def progress(res: ChangeResult) -> None:
        """At d0's report: end the run's lock session from another connection, as a
        pooler's idle timeout or pg_terminate_backend would (waiting until it is gone)."""
        if ended:
            return
        with postgres_server.admin() as admin:
            ended.extend(
                admin.execute(
                    "SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity "
                    "WHERE application_name = %s AND pid IN "
                    "(SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)",
                    (name,),
                ).fetchall()
            )

    mem = MemoryProvider()
    try:
        with pytest.raises(StateMovedError) as raised:
            apply(store, mem, DESIRED, parallelism=1, progress=progress)
        assert ended == [(True,)]
        e = raised.value
        assert e.exit_code == 4
        assert "the lock of 'dev' held by run" in e.message
        # whether the terminated connection was noticed as closed before the check or by it
        assert "was lost (its PostgreSQL session ended: " in e.message
        # no provider call after the session was lost
        assert mem.calls_of("create") == [D0.key] and mem.calls_of("update") == []
        (run,) = store.runs(ENV)
        assert run.outcome == "failed" and run.details["lock_lost"] == e.message
        changes = _changes(store, run.id)
        assert changes["d0"] == ("applied", None)
        for s in ("s1", "s2"):
            assert changes[s] == ("skipped", f"not started: {e.message}")
        assert set(store.applied(ENV)) == {D0.key}
        # the lock went with its session: the next run takes it without --break-lock
        other = open_state(postgres_url, repo_root=tmp_path, env={})
        try:
            with other.lock(ENV, "r2"):
                other.check_lock(ENV)
        finally:
            other.close()
    finally:
        store.close()


def test_a_lock_broken_mid_run_stops_it_before_its_next_provider_call(tmp_path: Path) -> None:
    """SQLite: another run's --break-lock at d0's report. The old run records nothing
    more (the state refuses its writes) and calls no provider again."""
    store = SQLiteState(tmp_path / "state.db", env={})
    other = SQLiteState(tmp_path / "state.db", env={})
    held: list[Any] = []

    def progress(res: ChangeResult) -> None:
        if not held:
            cm = other.lock(ENV, "r2", break_lock=True)
            held.append((cm, cm.__enter__()))  # the manager kept: collected, it releases

    mem = MemoryProvider()
    try:
        with pytest.raises(StateMovedError) as raised:
            apply(store, mem, DESIRED, parallelism=1, progress=progress)
        assert raised.value.exit_code == 4
        assert "was broken (now held by run r2" in raised.value.message
        assert mem.calls_of("create") == [D0.key]
        (run,) = other.runs(ENV)
        assert run.outcome == "interrupted"  # marked by the run that broke the lock
        assert _changes(other, run.id) == {"d0": ("applied", None)}
        assert other.lock_holder(ENV) == held[0][1]
    finally:
        store.close()
        other.close()


def test_an_intact_lock_lets_every_change_run(tmp_path: Path) -> None:
    store = SQLiteState(tmp_path / "state.db", env={})
    mem = MemoryProvider()
    try:
        result = apply(store, mem, DESIRED, parallelism=4)
        assert result.outcome == "applied" and len(mem.calls_of("create")) == 3
        assert "lock_lost" not in store.runs(ENV)[0].details
    finally:
        store.close()


def test_the_lock_session_keeps_tcp_keepalives_on_both_ends() -> None:
    params = lock_session_params({"host": "db", "options": "-c TimeZone=UTC"})
    assert {k: params[k] for k in LOCK_SESSION_KEEPALIVES} == LOCK_SESSION_KEEPALIVES
    assert params["keepalives_idle"] <= 60 and params["keepalives_count"] >= 1
    assert params["options"].startswith("-c TimeZone=UTC -c tcp_keepalives_idle=")
    assert lock_session_params({"keepalives_idle": "5"})["keepalives_idle"] == "5"
