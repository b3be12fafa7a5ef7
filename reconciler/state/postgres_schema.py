"""The tables of a `postgresql://` state (versioned in `reconciler_meta`, migrated by the
first writable open) and how records map to their rows."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg.types.json import Json

from reconciler.errors import StateError
from reconciler.instances import InstanceKey
from reconciler.state.base import AppliedRecord, ChangeRecord, LockInfo, RunRecord

#: `schema` in reconciler_meta of the layout below; older layouts are migrated by apply.
SCHEMA_VERSION = 1

SCHEMA_V1: list[LiteralString] = [
    """CREATE TABLE reconciler_meta (
        key text COLLATE "C" PRIMARY KEY, value text NOT NULL)""",
    """CREATE TABLE reconciler_serials (
        environment text COLLATE "C" PRIMARY KEY, serial bigint NOT NULL)""",
    """CREATE TABLE reconciler_applied (
        environment text COLLATE "C" NOT NULL, kind text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL, provider text NOT NULL, provider_id text,
        spec json NOT NULL, spec_hash text NOT NULL, secret_fingerprints json NOT NULL,
        commit_sha text, run_id text NOT NULL, applied_at timestamptz NOT NULL,
        PRIMARY KEY (environment, kind, name))""",
    """CREATE TABLE reconciler_runs (
        ord bigint GENERATED ALWAYS AS IDENTITY, id text COLLATE "C" PRIMARY KEY,
        environment text COLLATE "C" NOT NULL, commit_sha text COLLATE "C",
        trigger text NOT NULL, started_at timestamptz NOT NULL, finished_at timestamptz,
        outcome text NOT NULL, pull_request integer, author text, approvers json NOT NULL,
        reverted_commits json NOT NULL, reverted_runs json NOT NULL, details json NOT NULL,
        policy json, changes integer NOT NULL DEFAULT 0)""",
    "CREATE INDEX reconciler_runs_by_env ON reconciler_runs (environment, started_at)",
    "CREATE INDEX reconciler_runs_by_commit ON reconciler_runs (commit_sha)",
    """CREATE INDEX reconciler_runs_applied
        ON reconciler_runs (environment, outcome, started_at)""",
    """CREATE TABLE reconciler_changes (
        run_id text COLLATE "C" NOT NULL REFERENCES reconciler_runs (id), seq integer NOT NULL,
        environment text COLLATE "C" NOT NULL, kind text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL, action text NOT NULL, outcome text NOT NULL,
        error text, provider_id text, before_hash text, after_hash text,
        at timestamptz NOT NULL, diff json NOT NULL, PRIMARY KEY (run_id, seq))""",
    """CREATE TABLE reconciler_locks (
        environment text COLLATE "C" PRIMARY KEY, run_id text NOT NULL,
        holder_user text NOT NULL, host text NOT NULL, pid integer NOT NULL,
        acquired_at timestamptz NOT NULL, machine text NOT NULL)""",
]
#: MIGRATIONS[n] takes a database at schema n to n + 1, inside one transaction.
MIGRATIONS: list[list[LiteralString]] = [SCHEMA_V1]
assert len(MIGRATIONS) == SCHEMA_VERSION

APPLIED_COLUMNS = (
    "environment, kind, name, provider, provider_id, spec, spec_hash, "
    "secret_fingerprints, commit_sha, run_id, applied_at"
)
RUN_COLUMNS = (
    "id, environment, commit_sha, trigger, started_at, finished_at, outcome, pull_request, "
    "author, approvers, reverted_commits, reverted_runs, details, policy"
)
RUN_SQL = f"SELECT {RUN_COLUMNS} FROM reconciler_runs"
CHANGE_COLUMNS = (
    "run_id, seq, environment, kind, name, action, outcome, error, provider_id, before_hash, "
    "after_hash, at, diff"
)
LOCK_SQL = (
    "SELECT environment, run_id, holder_user, host, pid, acquired_at, machine "
    "FROM reconciler_locks WHERE environment = %s"
)
INSERT_APPLIED = (
    f"INSERT INTO reconciler_applied ({APPLIED_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)
UPSERT_APPLIED = (
    INSERT_APPLIED + " ON CONFLICT (environment, kind, name) DO UPDATE SET "
    "provider = EXCLUDED.provider, provider_id = EXCLUDED.provider_id, spec = EXCLUDED.spec, "
    "spec_hash = EXCLUDED.spec_hash, secret_fingerprints = EXCLUDED.secret_fingerprints, "
    "commit_sha = EXCLUDED.commit_sha, run_id = EXCLUDED.run_id, "
    "applied_at = EXCLUDED.applied_at"
)
INSERT_RUN = (
    f"INSERT INTO reconciler_runs ({RUN_COLUMNS}, changes) "
    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)
INSERT_CHANGE = (
    f"INSERT INTO reconciler_changes ({CHANGE_COLUMNS}) "
    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)
#: Appends the change numbered after the run's last one; no row when there is no run.
APPEND_CHANGE = (
    "WITH r AS (UPDATE reconciler_runs SET changes = changes + 1 WHERE id = %s "
    "RETURNING id, changes) "
    f"INSERT INTO reconciler_changes ({CHANGE_COLUMNS}) "
    "SELECT r.id, r.changes, %s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s FROM r RETURNING seq"
)
BUMP_SERIAL = (
    "INSERT INTO reconciler_serials VALUES (%s, 1) ON CONFLICT (environment) "
    "DO UPDATE SET serial = reconciler_serials.serial + 1"
)


def advisory_key(namespace: str, what: str) -> int:
    """A 63-bit advisory lock key for `what` in the tables' schema `namespace`."""
    digest = hashlib.sha256(f"reconciler\0{namespace}\0{what}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def as_json(obj: Any) -> Json:
    """Stored as `json` (the text as written, keys sorted like the other backends)."""
    return Json(obj, dumps=_dumps)


def lock_info(row: tuple[Any, ...]) -> LockInfo:
    env, run_id, user, host, pid, at, machine = row
    return LockInfo(env, run_id, user, host, int(pid), at, machine)


def applied_row(r: AppliedRecord) -> tuple[Any, ...]:
    return (
        r.environment, r.kind, r.name, r.provider, r.provider_id, as_json(r.spec), r.spec_hash,
        as_json(r.secret_fingerprints), r.commit, r.run_id, r.applied_at,
    )  # fmt: skip


def run_row(run: RunRecord, changes: int = 0) -> tuple[Any, ...]:
    return (
        run.id, run.environment, run.commit, run.trigger, run.started_at, run.finished_at,
        run.outcome, run.pull_request, run.author, as_json(run.approvers),
        as_json(run.reverted_commits), as_json(run.reverted_runs), as_json(run.details),
        None if run.policy is None else as_json(run.policy), changes,
    )  # fmt: skip


def change_values(c: ChangeRecord, at: datetime) -> tuple[Any, ...]:
    """The columns of a change after `run_id, seq`."""
    env, kind, name = c.key
    return (
        env, kind, name, c.action, c.outcome, c.error, c.provider_id, c.before_hash,
        c.after_hash, at, as_json(c.diff),
    )  # fmt: skip


def applied_record(row: tuple[Any, ...]) -> AppliedRecord:
    return AppliedRecord(*row)


def change_record(row: tuple[Any, ...]) -> ChangeRecord:
    _run, _seq, env, kind, name, action, outcome, error, pid, bh, ah, at, diff = row
    return ChangeRecord(
        InstanceKey(env, kind, name), action, outcome, error, pid, bh, ah, at, list(diff)
    )


def run_record(row: tuple[Any, ...], changes: list[ChangeRecord]) -> RunRecord:
    (rid, env, commit, trigger, started, finished, outcome, pr, author, approvers, rcommits,
     rruns, details, policy) = row  # fmt: skip
    return RunRecord(
        id=rid,
        environment=env,
        commit=commit,
        trigger=trigger,
        started_at=started,
        finished_at=finished,
        outcome=outcome,
        pull_request=pr,
        author=author,
        approvers=list(approvers),
        reverted_commits=list(rcommits),
        reverted_runs=list(rruns),
        changes=changes,
        details=dict(details),
        policy=policy,
    )


def schema_version(conn: psycopg.Connection[Any], url: str) -> int:
    """The schema of the tables; 0 when there are none yet."""
    # pg_class read through the statement's snapshot, not to_regclass(): the catalog
    # cache may not have seen a migration another process committed a moment ago.
    row = conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relname = 'reconciler_meta' "
        "AND n.nspname = current_schema()"
    ).fetchone()
    if not row or not row[0]:
        return 0
    found = conn.execute("SELECT value FROM reconciler_meta WHERE key = 'schema'").fetchone()
    version = int(found[0]) if found else 0
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state {url} has schema {version}, newer than this reconciler "
            f"understands ({SCHEMA_VERSION}): upgrade reconciler"
        )
    return version


def migrate(conn: psycopg.Connection[Any], url: str, namespace: str) -> None:
    """All steps in one transaction, one migrating process at a time."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(namespace, "schema"),))
        version = schema_version(conn, url)  # another process may have migrated meanwhile
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO reconciler_meta VALUES ('schema', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (str(SCHEMA_VERSION),),
        )
