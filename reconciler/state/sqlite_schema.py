"""The tables of a `sqlite://` state (`PRAGMA user_version`, migrated by apply) and how
records map to their rows."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any

from reconciler.errors import StateError
from reconciler.instances import InstanceKey, canonical_json
from reconciler.state.base import AppliedRecord, ChangeRecord, LockInfo, RunRecord

#: `PRAGMA user_version` of the layout below; older files are migrated by apply.
SCHEMA_VERSION = 3
#: The oldest schema a read-only store reads without migrating.
READABLE_FROM = 1

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE serials (environment TEXT PRIMARY KEY, serial INTEGER NOT NULL);
CREATE TABLE applied (
    environment TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    provider TEXT NOT NULL, provider_id TEXT, spec TEXT NOT NULL, spec_hash TEXT NOT NULL,
    secret_fingerprints TEXT NOT NULL, commit_sha TEXT, run_id TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (environment, kind, name)
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY, environment TEXT NOT NULL, commit_sha TEXT, trigger TEXT NOT NULL,
    started_at TEXT NOT NULL, finished_at TEXT, outcome TEXT NOT NULL,
    pull_request INTEGER, author TEXT, approvers TEXT NOT NULL,
    reverted_commits TEXT NOT NULL, reverted_runs TEXT NOT NULL, details TEXT NOT NULL
);
CREATE INDEX runs_by_env ON runs (environment, started_at);
CREATE INDEX runs_by_commit ON runs (commit_sha);
CREATE TABLE changes (
    run_id TEXT NOT NULL REFERENCES runs (id), seq INTEGER NOT NULL,
    environment TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    action TEXT NOT NULL, outcome TEXT NOT NULL, error TEXT, provider_id TEXT,
    before_hash TEXT, after_hash TEXT, at TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE locks (
    environment TEXT PRIMARY KEY, run_id TEXT NOT NULL, user TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, acquired_at TEXT NOT NULL
);
"""

#: A pid is only meaningful with the machine identity it was recorded in.
_SCHEMA_V2 = "ALTER TABLE locks ADD COLUMN machine TEXT NOT NULL DEFAULT ''"
#: The policy each run was judged and applied under; each change's field diff.
_SCHEMA_V3 = """
ALTER TABLE runs ADD COLUMN policy TEXT;
ALTER TABLE changes ADD COLUMN diff TEXT NOT NULL DEFAULT '[]';
CREATE INDEX runs_applied ON runs (environment, outcome, started_at)
"""


def _run_script(script: str) -> Callable[[sqlite3.Connection], None]:
    """Statement by statement: `executescript` would commit the migration's transaction."""

    def run(db: sqlite3.Connection) -> None:
        for statement in filter(str.strip, script.split(";")):
            db.execute(statement)

    return run


#: MIGRATIONS[n] takes a database at schema n to n + 1, inside one transaction.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _run_script(_SCHEMA_V1),
    _run_script(_SCHEMA_V2),
    _run_script(_SCHEMA_V3),
]
assert len(MIGRATIONS) == SCHEMA_VERSION

APPLIED_COLUMNS = (
    "environment, kind, name, provider, provider_id, spec, spec_hash, "
    "secret_fingerprints, commit_sha, run_id, applied_at"
)


def ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def applied_record(row: tuple[Any, ...]) -> AppliedRecord:
    env, kind, name, prov, pid, spec, h, fps, commit, run_id, at = row
    return AppliedRecord(
        env, kind, name, prov, pid, json.loads(spec), h, json.loads(fps), commit, run_id,
        datetime.fromisoformat(at),
    )  # fmt: skip


def lock_info(row: tuple[Any, ...]) -> LockInfo:
    env, run_id, user, host, pid, at, machine = row
    return LockInfo(env, run_id, user, host, int(pid), datetime.fromisoformat(at), machine)


def insert_run(db: sqlite3.Connection, run: RunRecord) -> None:
    db.execute(
        "INSERT INTO runs (id, environment, commit_sha, trigger, started_at, finished_at, "
        "outcome, pull_request, author, approvers, reverted_commits, reverted_runs, details, "
        "policy) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (run.id, run.environment, run.commit, run.trigger, run.started_at.isoformat(),
         run.finished_at.isoformat() if run.finished_at else None, run.outcome,
         run.pull_request, run.author, json.dumps(run.approvers),
         json.dumps(run.reverted_commits), json.dumps(run.reverted_runs),
         json.dumps(run.details, sort_keys=True),
         None if run.policy is None else json.dumps(run.policy, sort_keys=True)),
    )  # fmt: skip


def insert_change(
    db: sqlite3.Connection, run_id: str, seq: int, change: ChangeRecord, at: datetime
) -> None:
    env, kind, name = change.key
    db.execute(
        "INSERT INTO changes (run_id, seq, environment, kind, name, action, outcome, "
        "error, provider_id, before_hash, after_hash, at, diff) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (run_id, seq, env, kind, name, change.action, change.outcome, change.error,
         change.provider_id, change.before_hash, change.after_hash, at.isoformat(),
         json.dumps(change.diff, sort_keys=True)),
    )  # fmt: skip


def insert_applied(db: sqlite3.Connection, r: AppliedRecord) -> None:
    db.execute(
        "INSERT OR REPLACE INTO applied VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (r.environment, r.kind, r.name, r.provider, r.provider_id,
         canonical_json(r.spec) if r.spec_json is None else r.spec_json, r.spec_hash,
         json.dumps(r.secret_fingerprints, sort_keys=True), r.commit, r.run_id,
         r.applied_at.isoformat()),
    )  # fmt: skip


def change_record(row: tuple[Any, ...]) -> ChangeRecord:
    _run, env, kind, name, action, outcome, error, pid, bh, ah, at, diff = row
    return ChangeRecord(
        InstanceKey(env, kind, name), action, outcome, error, pid, bh, ah, ts(at),
        json.loads(diff),
    )  # fmt: skip


def run_record(row: tuple[Any, ...], changes: list[ChangeRecord]) -> RunRecord:
    (rid, env, commit, trigger, started, finished, outcome, pr, author, approvers, rcommits,
     rruns, details, policy) = row  # fmt: skip
    return RunRecord(
        rid, env, commit, trigger, datetime.fromisoformat(started), ts(finished), outcome, pr,
        author, json.loads(approvers), json.loads(rcommits), json.loads(rruns), changes,
        json.loads(details), json.loads(policy) if policy else None,
    )  # fmt: skip


def check_version(db: sqlite3.Connection, url: str) -> int:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state {url} has schema {version}, newer than this reconciler "
            f"understands ({SCHEMA_VERSION}): upgrade reconciler"
        )
    return int(version)


def readable_version(db: sqlite3.Connection, url: str) -> int | None:
    """The schema a read-only store reads as is; None for a file with no tables yet."""
    version = check_version(db, url)
    if version >= READABLE_FROM:
        return version
    if not db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        return None
    raise StateError(
        f"state {url} has schema {version}, older than this reconciler reads "
        f"without migrating ({READABLE_FROM}); `reconciler apply` migrates it"
    )


def migrate(db: sqlite3.Connection, url: str) -> None:
    if check_version(db, url) == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        version = check_version(db, url)  # another process may have migrated meanwhile
        for step in range(version, SCHEMA_VERSION):
            MIGRATIONS[step](db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
