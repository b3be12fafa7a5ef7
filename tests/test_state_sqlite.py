"""The SQLite backend: its file, schema and lock rows (the contract runs in
test_state_contract.py)."""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.errors import LockedError, StateError, StateMovedError
from reconciler.state import open_state
from reconciler.state.base import RunRecord, StateStore, machine_identity, pid_alive
from reconciler.state.sqlite import SCHEMA_VERSION, SQLiteState

URL = "sqlite:///.reconciler/state.db"
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _run(run_id: str) -> RunRecord:
    return RunRecord(run_id, "dev", "c1", "apply", T0, None, "running")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_sqlite_schema_version_and_newer_refused(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    SQLiteState(db, env={}).close()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StateError, match="newer than this reconciler"):
        SQLiteState(db, env={})
    with pytest.raises(StateError, match="newer than this reconciler"):
        SQLiteState(db, env={}, read_only=True)


def test_read_only_open_of_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    s = open_state(URL, repo_root=tmp_path, env={}, read_only=True)
    assert s.serials() == {} and s.runs() == [] and s.fingerprint_key(create=False) is None
    with pytest.raises(StateError, match="read-only"):
        s.begin_run(_run("r1"))
    s.close()
    assert _files(tmp_path) == []  # not the file, not even .reconciler/


def test_read_only_open_leaves_the_database_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    rw = SQLiteState(db, env={})
    rw.begin_run(_run("r1"))
    rw.fingerprint_key()
    rw.close()
    before = db.read_bytes()
    ro = SQLiteState(db, env={}, read_only=True)
    assert [r.id for r in ro.runs()] == ["r1"]
    with pytest.raises(StateError, match="read-only"):
        ro.fingerprint_key(create=True)
    ro.close()
    assert db.read_bytes() == before


def _schema_1(db: Path) -> None:
    """A state file as reconciler with schema 1 left it (locks without a machine
    identity), with a lock row in it."""
    store = SQLiteState(db, env={})
    store.begin_run(_run("old"))
    store.close()
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("ALTER TABLE locks DROP COLUMN machine")
    con.execute("DROP INDEX runs_applied")  # and what schema 3 added
    con.execute("ALTER TABLE runs DROP COLUMN policy")
    con.execute("ALTER TABLE changes DROP COLUMN diff")
    con.execute("PRAGMA user_version = 1")
    con.execute("INSERT INTO locks VALUES ('dev', 'old', 'u', 'h', 1, ?)", (T0.isoformat(),))
    con.close()


def test_schema_1_is_read_as_is_read_only_and_migrated_by_a_writer(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _schema_1(db)
    before = db.read_bytes()
    ro = SQLiteState(db, env={}, read_only=True)
    holder = ro.lock_holder("dev")
    assert holder is not None and holder.run_id == "old" and holder.machine == ""
    assert [r.id for r in ro.runs()] == ["old"]
    ro.close()
    assert db.read_bytes() == before
    rw = SQLiteState(db, env={})
    rw.close()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("SELECT machine FROM locks").fetchall() == [("",)]
    con.close()


def test_unreadable_old_schema_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE something_else (x)")
    con.close()
    with pytest.raises(StateError, match="apply` migrates it"):
        SQLiteState(db, env={}, read_only=True)


def _dead_pid() -> int:
    return next(p for p in range(300, 1 << 15) if not pid_alive(p))


def test_lock_row_records_the_machine_identity(tmp_path: Path) -> None:
    s = SQLiteState(tmp_path / "state.db", env={})
    with s.lock("dev", "r1"):
        con = sqlite3.connect(tmp_path / "state.db")
        row = con.execute("SELECT run_id, pid, machine FROM locks").fetchone()
        con.close()
    assert row == ("r1", os.getpid(), machine_identity()) and machine_identity()
    s.close()


def test_holder_with_another_machine_identity_is_not_taken_over(tmp_path: Path) -> None:
    """Same hostname, pid dead here, but recorded in another pid namespace: it may be
    alive there (two containers sharing the volume), so it is not stale."""
    db = tmp_path / "state.db"
    s = SQLiteState(db, env={})
    s.begin_run(_run("other"))
    with s.lock("dev", "other") as mine:
        pass
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO locks VALUES ('dev', 'other', 'u', ?, ?, ?, ?)",
        (mine.host, _dead_pid(), T0.isoformat(), "another-boot:4026532179"),
    )
    con.commit()
    con.close()
    with pytest.raises(LockedError, match="locked by run other") as e, s.lock("dev", "r2"):
        pass
    assert e.value.exit_code == 4 and "--break-lock" in e.value.message
    run = s.run("other")
    assert run is not None and run.outcome == "running"
    # the same row with this machine's identity is stale: taken over
    con = sqlite3.connect(db)
    con.execute("UPDATE locks SET machine = ?", (machine_identity(),))
    con.commit()
    con.close()
    with s.lock("dev", "r2"):
        pass
    run = s.run("other")
    assert run is not None and run.outcome == "interrupted"
    s.close()


def test_break_lock_stops_the_old_holder_in_another_process_file(tmp_path: Path) -> None:
    """Across two connections to one file: nothing the old holder writes lands."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    old: StateStore = open_state(url, repo_root=tmp_path, env={})
    new: StateStore = open_state(url, repo_root=tmp_path, env={})
    with old.lock("dev", "r1"):
        old.begin_run(_run("r1"))
        with new.lock("dev", "r2", break_lock=True):
            with pytest.raises(StateMovedError, match="re-plan") as e:
                old.finish_run("r1", "applied")
            assert e.value.exit_code == 4
    run = new.run("r1")
    assert run is not None and run.outcome == "interrupted"
    old.close()
    new.close()


def test_unwritable_state_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateError, match="cannot open state"):
        open_state("sqlite:///file/state.db", repo_root=tmp_path, env={})
