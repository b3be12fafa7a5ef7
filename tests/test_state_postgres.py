"""The postgresql:// state backend against a real PostgreSQL server: its schema,
session-bound locks and what it never shows (the password); the contract runs in
test_state_contract.py."""

from __future__ import annotations

import secrets
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from pgserver import PgServer

from reconciler.config import load_settings
from reconciler.errors import LockedError, StateError, StateMovedError
from reconciler.instances import InstanceKey
from reconciler.log import redact
from reconciler.session import Session
from reconciler.state import open_state
from reconciler.state.base import ChangeRecord, RunRecord
from reconciler.state.postgres import SCHEMA_VERSION
from reconciler.state.urls import mask_url, passwords

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _run(run_id: str) -> RunRecord:
    return RunRecord(run_id, "dev", "c1", "apply", T0, None, "running")


def _change(name: str) -> ChangeRecord:
    return ChangeRecord(
        InstanceKey("dev", "Deployment", name), "create", "applied", None, "x", None, "h"
    )


def test_schema_version_is_recorded_and_a_newer_one_refused(
    tmp_path: Path, postgres_server: PgServer
) -> None:
    url = postgres_server.fresh_schema()
    open_state(url, repo_root=tmp_path, env={}).close()
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM reconciler_meta WHERE key = 'schema'").fetchone()
        assert row == (str(SCHEMA_VERSION),)
        conn.execute(
            "UPDATE reconciler_meta SET value = %s WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),)
        )
    for read_only in (False, True):
        with pytest.raises(StateError, match="newer than this reconciler understands"):
            open_state(url, repo_root=tmp_path, env={}, read_only=read_only)


def test_read_only_open_of_an_empty_database_creates_nothing(
    tmp_path: Path, postgres_server: PgServer
) -> None:
    url = postgres_server.fresh_database()
    ro = open_state(url, repo_root=tmp_path, env={}, read_only=True)
    assert ro.runs() == [] and ro.serials() == {} and ro.lock_holder("dev") is None
    with pytest.raises(StateError, match="read-only"):
        ro.begin_run(_run("r1"))
    ro.close()
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'reconciler%%'"
        ).fetchone()
    assert tables == (0,)
    open_state(url, repo_root=tmp_path, env={}).close()  # a writable open makes them
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'reconciler%%'"
        ).fetchone()
    assert tables == (6,)


def test_a_lock_dies_with_its_session(
    tmp_path: Path, postgres_url: str, postgres_server: PgServer
) -> None:
    """The holder's process is alive (this one), but the server ended its session (a lost
    connection, a restarted server): the lock is gone, the next run takes it over without
    --break-lock, and the old holder's next write refuses instead of recording on."""
    name = "old-holder-" + secrets.token_hex(4)
    old = open_state(f"{postgres_url}&application_name={name}", repo_root=tmp_path, env={})
    new = open_state(postgres_url, repo_root=tmp_path, env={})
    try:
        with old.lock("dev", "r1"):
            old.begin_run(_run("r1"))
            old.record_change("r1", _change("a"), None, None)
            with pytest.raises(LockedError, match=r"locked by run r1 by .* \(pid \d+\)"):
                new.lock("dev", "r2").__enter__()
            with postgres_server.admin() as admin:
                ended = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s AND pid IN "
                    "(SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)",
                    (name,),
                ).fetchall()
            assert ended == [(True,)]
            with new.lock("dev", "r2") as info:
                assert new.lock_holder("dev") == info
                with pytest.raises(StateMovedError, match="now held by run r2"):
                    old.record_change("r1", _change("b"), None, None)
        run = new.run("r1")
        assert run is not None and run.outcome == "interrupted" and len(run.changes) == 1
        assert new.lock_holder("dev") is None
    finally:
        old.close()
        new.close()


def test_the_url_password_is_never_shown(tmp_path: Path, postgres_server: PgServer) -> None:
    url = postgres_server.fresh_schema()
    password = postgres_server.password
    assert password and password in url
    session = Session.start(load_settings(tmp_path, state_url=url, env={}))
    with session.open_store() as store:
        assert password not in store.url and "reconciler:***@127.0.0.1" in store.url
    # the session's store opener registered it: for its every output, and for log lines
    assert session.redactor.redact(f"x {password} y") == "x (sensitive) y"
    assert redact(f"x {password} y") == "x (sensitive) y"
    wrong = url.replace(password, "wrong-PASSWORD-1")
    with pytest.raises(StateError) as e:
        open_state(wrong, repo_root=tmp_path, env={})
    text = f"{e.value.message} {e.value.details}"
    assert "wrong-PASSWORD-1" not in text and "password authentication failed" in text


@pytest.mark.parametrize(
    ("url", "masked", "found"),
    [
        ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db", ["p%40ss", "p@ss"]),
        ("postgresql://u@h/db", "postgresql://u@h/db", []),
        (
            "postgres://h1,h2/db?user=u&password=pw&sslmode=require",
            "postgres://h1,h2/db?user=u&password=***&sslmode=require",
            ["pw"],
        ),
        ("postgresql://:pw@/db?host=/run/pg", "postgresql://:***@/db?host=/run/pg", ["pw"]),
        # libpq takes a password up to its `@`: `#` and `?` are part of it, not a
        # fragment or a query
        ("postgresql://u:p#ssw0rd@h/db", "postgresql://u:***@h/db", ["p#ssw0rd"]),
        (
            "postgresql://u:p?w@h/db?password=q",
            "postgresql://u:***@h/db?password=***",
            ["p?w", "q"],
        ),
    ],
)
def test_mask_url(url: str, masked: str, found: list[str]) -> None:
    assert mask_url(url) == masked
    assert passwords(url) == found


def test_processes_opening_a_new_database_at_once_migrate_it_once(
    postgres_server: PgServer,
) -> None:
    """Applies starting on a new database at once: one creates the tables, the others wait
    for it and find them (the catalog cache of a waiting session may not know yet)."""
    for _ in range(3):
        url = postgres_server.fresh_database()
        code = (
            "from reconciler.state import open_state\n"
            f"open_state({url!r}, repo_root='.', env={{}}).close()"
        )
        procs = [
            subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
            for _ in range(8)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, errors
