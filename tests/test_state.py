"""The StateStore contract, run against every backend (SQLite and git)."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import commit_all, git, init_repo, write_files

from reconciler.errors import ConfigError, LockedError, StateError
from reconciler.state import open_state
from reconciler.state.base import (
    SCHEMA_VERSION,
    AppliedRecord,
    ChangeRecord,
    RunRecord,
    StateStore,
    fingerprint,
)
from reconciler.state.sqlite import SQLiteState

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

Factory = Callable[[], StateStore]


@pytest.fixture(params=["sqlite", "git"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    opened: list[StateStore] = []
    url = "sqlite:///.reconciler/state.db"
    root = tmp_path
    if request.param == "git":
        # A manifests repo with one commit and a bare `origin`: every write is pushed.
        url = "git://refs/reconciler/state"
        subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], check=True)
        root = init_repo(tmp_path / "work")
        write_files(root, {"reconciler.yaml": "state: git://refs/reconciler/state\n"})
        commit_all(root, "init")
        git(root, "remote", "add", "origin", str(tmp_path / "origin.git"))

    def factory() -> StateStore:
        store = open_state(url, repo_root=root)
        opened.append(store)
        return store

    yield factory
    for s in opened:
        s.close()


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
        env, "Deployment", name, "local", f"id-{name}", spec, f"h-{name}-{model}",
        {"K": fingerprint(b"k", "v")}, "c1", run_id, T0,
    )  # fmt: skip


def _change(name: str, action: str = "create", outcome: str = "applied") -> ChangeRecord:
    return ChangeRecord(("dev", "Deployment", name), action, outcome, None, f"id-{name}", None, "h")


def test_empty_store(make_store: Factory) -> None:
    s = make_store()
    assert s.serial("dev") == 0
    assert s.applied("dev") == {}
    assert s.runs() == []
    assert s.environments() == []
    assert s.run("nope") is None


def test_record_change_updates_applied_serial_and_run(make_store: Factory) -> None:
    s = make_store()
    s.begin_run(_run("r1"))
    s.record_change("r1", _change("a"), _applied("a", "r1"), None)
    s.record_change("r1", _change("b"), _applied("b", "r1"), None)
    assert s.serial("dev") == 2
    assert set(s.applied("dev")) == {("dev", "Deployment", "a"), ("dev", "Deployment", "b")}
    rec = s.applied("dev")[("dev", "Deployment", "a")]
    assert rec.spec["env"] == {"K": {"secretEnv": "K"}}
    assert rec.provider_id == "id-a" and rec.applied_at == T0
    s.finish_run("r1", "applied", {"note": 1})
    run = s.run("r1")
    assert run is not None and run.outcome == "applied" and run.finished_at is not None
    assert [c.key[2] for c in run.changes] == ["a", "b"]
    assert run.details == {"note": 1} and run.approvers == ["alice"]
    assert s.serials() == {"dev": 2}
    assert s.environments() == ["dev"]


def test_failed_change_is_recorded_without_touching_applied(make_store: Factory) -> None:
    s = make_store()
    s.begin_run(_run("r1"))
    s.record_change("r1", _change("a", outcome="failed"), None, None)
    assert s.serial("dev") == 0
    assert s.applied("dev") == {}
    run = s.run("r1")
    assert run is not None and [c.outcome for c in run.changes] == ["failed"]


def test_delete_removes_applied(make_store: Factory) -> None:
    s = make_store()
    s.begin_run(_run("r1"))
    s.record_change("r1", _change("a"), _applied("a", "r1"), None)
    s.begin_run(_run("r2", at=T0 + timedelta(minutes=1)))
    s.record_change("r2", _change("a", "delete"), None, ("dev", "Deployment", "a"))
    assert s.applied("dev") == {}
    assert s.serial("dev") == 2


def test_state_persists_across_reopen(make_store: Factory) -> None:
    s = make_store()
    s.begin_run(_run("r1"))
    s.record_change("r1", _change("a"), _applied("a", "r1"), None)
    s.close()
    s2 = make_store()
    assert list(s2.applied("dev")) == [("dev", "Deployment", "a")]
    assert s2.serial("dev") == 1


def test_runs_newest_first_filtered_and_limited(make_store: Factory) -> None:
    s = make_store()
    for i in range(5):
        env = "dev" if i % 2 == 0 else "prod"
        s.begin_run(_run(f"r{i}", env, at=T0 + timedelta(minutes=i), commit=f"c{i % 2}"))
    assert [r.id for r in s.runs()] == ["r4", "r3", "r2", "r1", "r0"]
    assert [r.id for r in s.runs("dev")] == ["r4", "r2", "r0"]
    assert [r.id for r in s.runs(limit=2)] == ["r4", "r3"]
    assert [r.id for r in s.runs_for_commit("c1")] == ["r3", "r1"]


def test_environments_are_independent(make_store: Factory) -> None:
    s = make_store()
    s.begin_run(_run("r1", "prod"))
    s.record_change(
        "r1",
        ChangeRecord(("prod", "Deployment", "a"), "create", "applied", None, "x", None, "h"),
        _applied("a", "r1", env="prod"),
        None,
    )
    assert s.serial("dev") == 0 and s.serial("prod") == 1
    assert s.applied("dev") == {}


def test_lock_excludes_second_holder_and_names_it(make_store: Factory) -> None:
    s = make_store()
    with s.lock("dev", "r1") as info:
        assert info.run_id == "r1"
        other = make_store()
        with pytest.raises(LockedError) as e, other.lock("dev", "r2"):
            pass
        assert "run r1" in e.value.message and f"pid {os.getpid()}" in e.value.message
        assert e.value.exit_code == 4
        # another environment is free
        with other.lock("staging", "r3"):
            pass
    with s.lock("dev", "r4"):
        pass


def test_break_lock_takes_over_and_marks_run_interrupted(make_store: Factory) -> None:
    s = make_store()
    s.begin_run(_run("r1"))
    holder = s.lock("dev", "r1")
    holder.__enter__()
    with make_store().lock("dev", "r2", break_lock=True) as info:
        assert info.run_id == "r2"
    run = s.run("r1")
    assert run is not None and run.outcome == "interrupted"


def _hold_lock_and_die(url_path: str) -> None:
    store = SQLiteState(Path(url_path))
    store.begin_run(_run("dead"))
    held = store.lock("dev", "dead")
    held.__enter__()
    os._exit(0)  # like kill -9: no cleanup runs


def test_lock_of_dead_process_is_taken_over(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    p = multiprocessing.get_context("spawn").Process(target=_hold_lock_and_die, args=(str(db),))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    s = SQLiteState(db)
    holder = s.lock_holder("dev")
    assert holder is not None and holder.run_id == "dead"
    with s.lock("dev", "alive"):
        pass
    run = s.run("dead")
    assert run is not None and run.outcome == "interrupted"
    s.close()


def test_fingerprint_key_is_stable_and_env_overrides(
    make_store: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_store()
    k1 = s.fingerprint_key()
    assert len(k1) == 32 and s.fingerprint_key() == k1
    assert fingerprint(k1, "secret") != fingerprint(k1, "other")
    assert "secret" not in fingerprint(k1, "secret")
    monkeypatch.setenv("RECONCILER_FINGERPRINT_KEY", "from-env")
    assert s.fingerprint_key() == b"from-env"


def test_sqlite_schema_version_and_newer_refused(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    SQLiteState(db).close()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StateError, match="newer than this reconciler"):
        SQLiteState(db)


def test_unwritable_state_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateError, match="cannot open state"):
        open_state("sqlite:///file/state.db", repo_root=tmp_path)


def test_state_urls(tmp_path: Path) -> None:
    s = open_state("sqlite:///sub/state.db", repo_root=tmp_path)
    s.close()
    assert (tmp_path / "sub" / "state.db").exists()
    abs_db = tmp_path / "abs.db"
    open_state(f"sqlite:///{abs_db}", repo_root=Path("/nonexistent")).close()
    assert abs_db.exists()
    with pytest.raises(ConfigError, match="unknown state backend 'redis'"):
        open_state("redis://x", repo_root=tmp_path)
    with pytest.raises(ConfigError, match="needs a path"):
        open_state("sqlite://", repo_root=tmp_path)
