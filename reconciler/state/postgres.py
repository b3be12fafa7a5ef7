"""`postgresql://` state: one database shared by every runner, through psycopg 3 and a
small connection pool.

Every recorded change is one transaction (committed, so durable, when `record_change`
returns). The tables carry a `reconciler_` prefix in the connection's current schema
(`?options=-csearch_path%3Dname` picks another); the schema is versioned in
`reconciler_meta` and migrated, under an advisory lock, by the first writable open.

Locks die with their session. A run holds its environment through a PostgreSQL
session-level advisory lock on a connection of its own, and records who it is (user,
host, pid, machine identity) in `reconciler_locks` for the exit-4 message. When the
holder's process dies (`kill -9`, OOM, a lost runner), the server ends its session and the
advisory lock goes with it: the next apply finds the row without a session, takes it over
and marks the holder's run `interrupted`. A holder whose session lives is only taken over
with `--break-lock`, which ends that session (`pg_terminate_backend`); the old holder's
next write then fails with StateMovedError, because every write checks, under a row lock
in its own transaction, that the lock row is still its own. Before each provider write
the executor asks `check_lock`: one query on the lock's own session (kept alive with
TCP keepalives from both ends), so a session lost to an idle timeout, a network cut or
pg_terminate_backend stops the run before its next provider call. Decisions about a lock are
made under a transaction-level advisory lock per environment, so the advisory lock and
the row always change together. Do not put a transaction-pooling proxy (pgBouncer in
transaction mode) between reconciler and the server: it would break session locks.

Read-only stores (plan, drift, status, history) open read-only transactions and never
create or migrate the tables; a database without them reads as an empty state.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import partial
from typing import Any, LiteralString

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Json
from psycopg_pool import ConnectionPool, PoolTimeout

from reconciler.errors import ConfigError, LockedError, StateError, StateMovedError
from reconciler.instances import InstanceKey
from reconciler.log import redact, register_secrets
from reconciler.state.base import (
    AppliedRecord,
    AppliedSummary,
    ChangeRecord,
    EnvironmentState,
    HeldLocks,
    LockInfo,
    RunRecord,
    already_has_state,
    check_takeover,
    fingerprint_key_from_env,
    holding,
    index_from_rows,
    other_key_error,
    read_only_error,
    this_process,
)
from reconciler.state.urls import mask_url, passwords

#: `schema` in reconciler_meta of the layout below; older layouts are migrated by apply.
SCHEMA_VERSION = 1
#: Connections per store besides one per held lock: the executor records from a few
#: threads; twenty runners must stay well under the server's max_connections (100).
POOL_SIZE = 4
#: How long a lock waits for the session of a holder known to be gone (or broken) to end.
SESSION_END_TIMEOUT_S = 30
#: Server-side TCP keepalives for lock sessions: a holder whose machine vanished without
#: closing its connection loses its lock in about a minute instead of hours.
_LOCK_SESSION_OPTIONS = (
    "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"
)
#: The same from our side (libpq's parameters): a server or pooler that vanished, or a
#: path that drops idle connections, fails the lock session's next check within about
#: a minute instead of when the kernel gives up (hours). A URL's own values win.
LOCK_SESSION_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
#: Whether the session running it still holds the advisory lock (classid, objid).
_HOLDS_LOCK: LiteralString = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND pid = pg_backend_pid() AND objsubid = 1 AND classid = %s::bigint::oid "
    "AND objid = %s::bigint::oid)"
)

_SCHEMA_V1: list[LiteralString] = [
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
#: _MIGRATIONS[n] takes a database at schema n to n + 1, inside one transaction.
_MIGRATIONS: list[list[LiteralString]] = [_SCHEMA_V1]
assert len(_MIGRATIONS) == SCHEMA_VERSION

_APPLIED_COLUMNS = (
    "environment, kind, name, provider, provider_id, spec, spec_hash, "
    "secret_fingerprints, commit_sha, run_id, applied_at"
)
_RUN_COLUMNS = (
    "id, environment, commit_sha, trigger, started_at, finished_at, outcome, pull_request, "
    "author, approvers, reverted_commits, reverted_runs, details, policy"
)
_RUN_SQL = f"SELECT {_RUN_COLUMNS} FROM reconciler_runs"
_CHANGE_COLUMNS = (
    "run_id, seq, environment, kind, name, action, outcome, error, provider_id, before_hash, "
    "after_hash, at, diff"
)
_LOCK_SQL = (
    "SELECT environment, run_id, holder_user, host, pid, acquired_at, machine "
    "FROM reconciler_locks WHERE environment = %s"
)
_INSERT_APPLIED = (
    f"INSERT INTO reconciler_applied ({_APPLIED_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)
_UPSERT_APPLIED = (
    _INSERT_APPLIED + " ON CONFLICT (environment, kind, name) DO UPDATE SET "
    "provider = EXCLUDED.provider, provider_id = EXCLUDED.provider_id, spec = EXCLUDED.spec, "
    "spec_hash = EXCLUDED.spec_hash, secret_fingerprints = EXCLUDED.secret_fingerprints, "
    "commit_sha = EXCLUDED.commit_sha, run_id = EXCLUDED.run_id, "
    "applied_at = EXCLUDED.applied_at"
)
_INSERT_RUN = (
    f"INSERT INTO reconciler_runs ({_RUN_COLUMNS}, changes) "
    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)
_INSERT_CHANGE = (
    f"INSERT INTO reconciler_changes ({_CHANGE_COLUMNS}) "
    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)
#: Appends the change numbered after the run's last one; no row when there is no run.
_APPEND_CHANGE = (
    "WITH r AS (UPDATE reconciler_runs SET changes = changes + 1 WHERE id = %s "
    "RETURNING id, changes) "
    f"INSERT INTO reconciler_changes ({_CHANGE_COLUMNS}) "
    "SELECT r.id, r.changes, %s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s FROM r RETURNING seq"
)
_BUMP_SERIAL = (
    "INSERT INTO reconciler_serials VALUES (%s, 1) ON CONFLICT (environment) "
    "DO UPDATE SET serial = reconciler_serials.serial + 1"
)


def lock_session_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The connection parameters of a lock's session: the store's, with TCP keepalives
    from both ends (the URL's own keepalive values win)."""
    options = " ".join(o for o in (params.get("options") or "", _LOCK_SESSION_OPTIONS) if o)
    return {**LOCK_SESSION_KEEPALIVES, **params, "options": options}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def _json(obj: Any) -> Json:
    """Stored as `json` (the text as written, keys sorted like the other backends)."""
    return Json(obj, dumps=_dumps)


def _advisory_key(namespace: str, what: str) -> int:
    """A 63-bit advisory lock key for `what` in the tables' schema `namespace`."""
    digest = hashlib.sha256(f"reconciler\0{namespace}\0{what}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _lock_info(row: tuple[Any, ...]) -> LockInfo:
    env, run_id, user, host, pid, at, machine = row
    return LockInfo(env, run_id, user, host, int(pid), at, machine)


def _applied_row(r: AppliedRecord) -> tuple[Any, ...]:
    return (
        r.environment, r.kind, r.name, r.provider, r.provider_id, _json(r.spec), r.spec_hash,
        _json(r.secret_fingerprints), r.commit, r.run_id, r.applied_at,
    )  # fmt: skip


def _run_row(run: RunRecord, changes: int = 0) -> tuple[Any, ...]:
    return (
        run.id, run.environment, run.commit, run.trigger, run.started_at, run.finished_at,
        run.outcome, run.pull_request, run.author, _json(run.approvers),
        _json(run.reverted_commits), _json(run.reverted_runs), _json(run.details),
        None if run.policy is None else _json(run.policy), changes,
    )  # fmt: skip


def _change_values(c: ChangeRecord, at: datetime) -> tuple[Any, ...]:
    """The columns of a change after `run_id, seq`."""
    env, kind, name = c.key
    return (
        env, kind, name, c.action, c.outcome, c.error, c.provider_id, c.before_hash,
        c.after_hash, at, _json(c.diff),
    )  # fmt: skip


def _applied_record(row: tuple[Any, ...]) -> AppliedRecord:
    return AppliedRecord(*row)


def _change_record(row: tuple[Any, ...]) -> ChangeRecord:
    _run, _seq, env, kind, name, action, outcome, error, pid, bh, ah, at, diff = row
    return ChangeRecord(
        InstanceKey(env, kind, name), action, outcome, error, pid, bh, ah, at, list(diff)
    )


def _run_record(row: tuple[Any, ...], changes: list[ChangeRecord]) -> RunRecord:
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


class PostgresState:
    """`postgresql://user@host[:port]/dbname[?param=value...]` (libpq's URL)."""

    def __init__(self, url: str, *, env: Mapping[str, str], read_only: bool = False) -> None:
        register_secrets(passwords(url))
        self.url = mask_url(url)
        self.read_only = read_only
        self._env = dict(env)
        self._held = HeldLocks()
        self._mu = threading.Lock()
        #: The session that holds each lock this store took, by environment.
        self._sessions: dict[str, psycopg.Connection[Any]] = {}
        self._params = self._conninfo(url)
        self._empty = False
        with self._direct("open") as conn:
            self._namespace = self._schema_name(conn)
            version = self._version(conn)
            if read_only:
                self._empty = version == 0
            elif version < SCHEMA_VERSION:
                self._migrate(conn)
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        if not self._empty:
            self._pool = ConnectionPool(
                make_conninfo(**self._params),
                min_size=1,
                max_size=POOL_SIZE,
                kwargs={"autocommit": True},
                name="reconciler-state",
                timeout=60,
                open=False,
            )
            self._pool.open(wait=False)

    # -- plumbing --------------------------------------------------------------------

    def _conninfo(self, url: str) -> dict[str, Any]:
        try:
            params: dict[str, Any] = conninfo_to_dict(url)
        except psycopg.ProgrammingError as e:
            raise ConfigError(
                f"state URL {self.url!r} is not a valid PostgreSQL URL: {redact(str(e))}"
            ) from None
        params.setdefault("connect_timeout", 10)
        params.setdefault("application_name", "reconciler")
        options = [params.get("options") or "", "-c TimeZone=UTC"]
        if self.read_only:
            options.append("-c default_transaction_read_only=on")
        params["options"] = " ".join(o for o in options if o)
        return params

    def _error(self, what: str, e: BaseException) -> StateError:
        """One line saying why (the server's words, never the URL's password)."""
        text = redact(str(e).strip()) or type(e).__name__
        first, _, rest = text.partition("\n")
        doing = f"{what} state" if what == "open" else f"{what} in state"
        return StateError(f"cannot {doing} {self.url}: {first}", details=rest or None)

    @contextmanager
    def _direct(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection of its own (not the pool's), closed after the block."""
        try:
            conn = psycopg.connect(make_conninfo(**self._params), autocommit=True)
        except psycopg.Error as e:
            raise self._error(what, e) from None
        try:
            yield conn
        except psycopg.Error as e:
            raise self._error(what, e) from None
        finally:
            conn.close()

    def _schema_name(self, conn: psycopg.Connection[Any]) -> str:
        row = conn.execute("SELECT current_schema()").fetchone()
        if row is None or row[0] is None:
            raise StateError(
                f"state {self.url}: no schema to keep the tables in (the search_path names "
                "none that exists)"
            )
        return str(row[0])

    def _version(self, conn: psycopg.Connection[Any]) -> int:
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
                f"state {self.url} has schema {version}, newer than this reconciler "
                f"understands ({SCHEMA_VERSION}): upgrade reconciler"
            )
        return version

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """All steps in one transaction, one migrating process at a time."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._key("schema"),))
            version = self._version(conn)  # another process may have migrated meanwhile
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO reconciler_meta VALUES ('schema', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )

    def _key(self, what: str) -> int:
        return _advisory_key(self._namespace, what)

    @contextmanager
    def _connection(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        if self._pool is None:
            raise StateError(f"state {self.url} is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.Error, PoolTimeout) as e:
            raise self._error(what, e) from None

    @contextmanager
    def _tx(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """One write transaction: nothing of it stays when it raises."""
        if self.read_only:
            raise read_only_error(self.url, what)
        with self._connection(what) as conn, conn.transaction():
            yield conn

    def _query(self, sql: LiteralString, args: tuple[Any, ...] = ()) -> list[Any]:
        if self._empty:
            return []
        with self._connection("read") as conn:
            return conn.execute(sql, args).fetchall()

    def _lock_row(
        self, conn: psycopg.Connection[Any], environment: str, *, share: bool = False
    ) -> LockInfo | None:
        sql: LiteralString = _LOCK_SQL + (" FOR SHARE" if share else "")
        row = conn.execute(sql, (environment,)).fetchone()
        return _lock_info(row) if row else None

    def _check_held(self, conn: psycopg.Connection[Any], environment: str) -> None:
        """Inside the write's transaction, with the lock row locked until it commits (a
        takeover waits for it): a run holding the lock writes only while it is its own."""
        if environment in self._held:
            self._held.check(environment, self._lock_row(conn, environment, share=True))

    # -- reads -----------------------------------------------------------------------

    def serial(self, environment: str) -> int:
        rows = self._query(
            "SELECT serial FROM reconciler_serials WHERE environment = %s", (environment,)
        )
        return int(rows[0][0]) if rows else 0

    def serials(self) -> dict[str, int]:
        rows = self._query("SELECT environment, serial FROM reconciler_serials ORDER BY 1")
        return {e: int(s) for e, s in rows}

    def environments(self) -> list[str]:
        rows = self._query(
            "SELECT environment FROM reconciler_applied UNION "
            "SELECT environment FROM reconciler_runs ORDER BY 1"
        )
        return [r[0] for r in rows]

    def applied(
        self, environment: str, keys: Collection[InstanceKey] | None = None
    ) -> dict[InstanceKey, AppliedRecord]:
        base: LiteralString = f"SELECT {_APPLIED_COLUMNS} FROM reconciler_applied "
        if keys is None:
            rows = self._query(base + "WHERE environment = %s ORDER BY kind, name", (environment,))
            return {InstanceKey(*r[:3]): _applied_record(r) for r in rows}
        wanted = [k for k in dict.fromkeys(map(InstanceKey._make, keys)) if k[0] == environment]
        if not wanted:
            return {}
        if len(wanted) == 1:  # the executor asks per change: one primary-key lookup
            rows = self._query(
                base + "WHERE environment = %s AND kind = %s AND name = %s", tuple(wanted[0])
            )
        else:
            rows = self._query(
                base + "WHERE environment = %s AND (kind, name) IN "
                "(SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY kind, name",
                (environment, [k.kind for k in wanted], [k.name for k in wanted]),
            )
        return {InstanceKey(*r[:3]): _applied_record(r) for r in rows}

    def applied_index(self, environment: str) -> dict[InstanceKey, AppliedSummary]:
        rows = self._query(
            "SELECT kind, name, provider, spec_hash, secret_fingerprints::text "
            "FROM reconciler_applied WHERE environment = %s",
            (environment,),
        )
        return index_from_rows(environment, rows)

    def runs(self, environment: str | None = None, limit: int | None = None) -> list[RunRecord]:
        if environment is None:
            sql: LiteralString = _RUN_SQL + " ORDER BY started_at DESC, ord DESC LIMIT %s"
            args: tuple[Any, ...] = (limit,)
        else:
            sql = _RUN_SQL + " WHERE environment = %s ORDER BY started_at DESC, ord DESC LIMIT %s"
            args = (environment, limit)
        return self._load_runs(self._query(sql, args))

    def run(self, run_id: str) -> RunRecord | None:
        runs = self._load_runs(self._query(_RUN_SQL + " WHERE id = %s", (run_id,)))
        return runs[0] if runs else None

    def runs_for_commit(self, commit: str) -> list[RunRecord]:
        rows = self._query(
            _RUN_SQL + " WHERE commit_sha = %s ORDER BY started_at DESC, ord DESC", (commit,)
        )
        return self._load_runs(rows)

    def last_applied_run(self, environment: str) -> RunRecord | None:
        rows = self._query(
            _RUN_SQL + " WHERE environment = %s AND outcome = 'applied' AND trigger <> 'heal' "
            "ORDER BY started_at DESC, ord DESC LIMIT 1",
            (environment,),
        )
        return _run_record(rows[0], []) if rows else None

    def _load_runs(self, rows: list[Any]) -> list[RunRecord]:
        if not rows:
            return []
        changes: dict[str, list[ChangeRecord]] = {r[0]: [] for r in rows}
        found = self._query(
            f"SELECT {_CHANGE_COLUMNS} FROM reconciler_changes WHERE run_id = ANY(%s) "
            "ORDER BY run_id, seq",
            (list(changes),),
        )
        for row in found:
            changes[row[0]].append(_change_record(row))
        return [_run_record(r, changes[r[0]]) for r in rows]

    # -- writes ----------------------------------------------------------------------

    def begin_run(self, run: RunRecord) -> None:
        with self._tx(f"begin run {run.id}") as conn:
            self._check_held(conn, run.environment)
            conn.execute(_INSERT_RUN, _run_row(run))

    def record_change(
        self,
        run_id: str,
        change: ChangeRecord,
        applied: AppliedRecord | None,
        removed: InstanceKey | None,
    ) -> None:
        """One transaction in one pipeline: two round trips (the checks, then COMMIT),
        not one per statement."""
        env = change.key.environment
        at = change.at or datetime.now(UTC)
        what = f"record a change of run {run_id}"
        if self.read_only:
            raise read_only_error(self.url, what)
        with self._connection(what) as conn, conn.pipeline(), conn.transaction():
            held = None
            if env in self._held:
                held = conn.execute(_LOCK_SQL + " FOR SHARE", (env,))
            appended = conn.execute(_APPEND_CHANGE, (run_id, *_change_values(change, at)))
            if removed is not None:
                conn.execute(
                    "DELETE FROM reconciler_applied "
                    "WHERE environment = %s AND kind = %s AND name = %s",
                    tuple(removed),
                )
            if applied is not None:
                conn.execute(_UPSERT_APPLIED, _applied_row(applied))
            if applied is not None or removed is not None:
                conn.execute(_BUMP_SERIAL, (env,))
            if held is not None:
                row = held.fetchone()
                self._held.check(env, _lock_info(row) if row else None)
            if appended.fetchone() is None:
                raise StateError(f"state {self.url}: no run {run_id} (begin_run first)")

    def finish_run(self, run_id: str, outcome: str, details: dict[str, Any] | None = None) -> None:
        with self._tx(f"finish run {run_id}") as conn:
            row = conn.execute(
                "SELECT environment FROM reconciler_runs WHERE id = %s", (run_id,)
            ).fetchone()
            if row is None:
                raise StateError(f"state {self.url}: no run {run_id} (begin_run first)")
            self._check_held(conn, row[0])
            conn.execute(
                "UPDATE reconciler_runs SET outcome = %s, finished_at = now(), "
                "details = COALESCE(%s, details) WHERE id = %s",
                (outcome, None if details is None else _json(details), run_id),
            )

    def import_environment(self, state: EnvironmentState) -> None:
        env = state.environment
        with self._tx(f"import environment {env!r}") as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._key(f"guard\0{env}"),))
            taken = conn.execute(
                "SELECT 1 FROM reconciler_runs WHERE environment = %(e)s UNION ALL "
                "SELECT 1 FROM reconciler_applied WHERE environment = %(e)s UNION ALL "
                "SELECT 1 FROM reconciler_serials WHERE environment = %(e)s LIMIT 1",
                {"e": env},
            ).fetchone()
            if taken is not None:
                raise already_has_state(self.url, env)
            with conn.cursor() as cur:
                cur.executemany(_INSERT_RUN, [_run_row(r, len(r.changes)) for r in state.runs])
                cur.executemany(
                    _INSERT_CHANGE,
                    [
                        (run.id, seq, *_change_values(c, c.at or run.started_at))
                        for run in state.runs
                        for seq, c in enumerate(run.changes, 1)
                    ],
                )
                cur.executemany(_INSERT_APPLIED, [_applied_row(r) for r in state.applied])
            if state.serial:
                conn.execute("INSERT INTO reconciler_serials VALUES (%s, %s)", (env, state.serial))

    # -- locks -----------------------------------------------------------------------

    def lock_holder(self, environment: str) -> LockInfo | None:
        if self._empty:
            return None
        with self._connection("read") as conn:
            return self._lock_row(conn, environment)

    @contextmanager
    def lock(
        self, environment: str, run_id: str, *, break_lock: bool = False
    ) -> Iterator[LockInfo]:
        if self.read_only:
            raise read_only_error(self.url, f"lock {environment!r}")
        me = this_process(environment, run_id)
        session = self._open_session(f"lock {environment!r}")
        try:
            self._acquire(session, me, break_lock=break_lock)
        except BaseException:
            session.close()
            raise
        with self._mu:
            self._sessions[environment] = session
        with holding(self._held, me, partial(self._unlock, session)):
            yield me

    def check_lock(self, environment: str) -> None:
        """One round trip on the lock's own session: it is alive and still holds the
        advisory lock (while it does, nobody can have taken the lock over, so the row is
        still this run's). A session ended by the server, a pooler's idle timeout, a lost
        connection or another run's --break-lock fails it."""
        mine = self._held.get(environment)
        if mine is None:
            return
        with self._mu:
            session = self._sessions.get(environment)
        key = self._key(f"lock\0{environment}")
        why = "its PostgreSQL session ended: the connection is closed"
        if session is not None and not session.closed:
            try:
                row = session.execute(_HOLDS_LOCK, (key >> 32, key & 0xFFFFFFFF)).fetchone()
            except psycopg.Error as e:
                text = redact(str(e).strip()).partition("\n")[0] or type(e).__name__
                why = f"its PostgreSQL session ended: {text}"
            else:
                if row is not None and row[0]:
                    return
                why = "its PostgreSQL session no longer holds the advisory lock"
        raise StateMovedError(
            f"state moved: the lock of {environment!r} held by run {mine.run_id} was lost "
            f"({why}); re-plan and apply again"
        )

    def _open_session(self, what: str) -> psycopg.Connection[Any]:
        """The connection a lock lives on: it ends when this process does."""
        params = lock_session_params(self._params)
        try:
            return psycopg.connect(make_conninfo(**params), autocommit=True)
        except psycopg.Error as e:
            raise self._error(what, e) from None

    def _acquire(self, session: psycopg.Connection[Any], me: LockInfo, *, break_lock: bool) -> None:
        env = me.environment
        key = self._key(f"lock\0{env}")
        try:
            with session.transaction():
                session.execute("SELECT pg_advisory_xact_lock(%s)", (self._key(f"guard\0{env}"),))
                row = session.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                holder = self._lock_row(session, env)
                if not (row and row[0]):
                    self._wait_for_holder(session, key, holder, me, break_lock=break_lock)
                if holder is not None:  # its session is gone: take over
                    session.execute("DELETE FROM reconciler_locks WHERE environment = %s", (env,))
                    session.execute(
                        "UPDATE reconciler_runs SET outcome = 'interrupted', finished_at = %s "
                        "WHERE id = %s AND outcome = 'running'",
                        (me.acquired_at, holder.run_id),
                    )
                session.execute(
                    "INSERT INTO reconciler_locks (environment, run_id, holder_user, host, pid, "
                    "acquired_at, machine) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                    (env, me.run_id, me.user, me.host, me.pid, me.acquired_at, me.machine),
                )
        except psycopg.Error as e:
            raise self._error(f"lock {env!r}", e) from None

    def _wait_for_holder(
        self,
        session: psycopg.Connection[Any],
        key: int,
        holder: LockInfo | None,
        me: LockInfo,
        *,
        break_lock: bool,
    ) -> None:
        """The advisory lock is held by another session. Take it only from a holder known
        gone (`is_stale`: its session is about to end) or, with --break-lock, after ending
        the holder's session; else LockedError naming the holder."""
        env = me.environment
        if holder is not None:
            check_takeover(holder, me, break_lock=break_lock)
            who = holder.describe()
        elif not break_lock:
            raise LockedError(
                f"environment {env!r} is locked by a PostgreSQL session that recorded no "
                "holder; if no run is going on, re-run with --break-lock"
            )
        else:
            who = "a session that recorded no holder"
        if break_lock:
            self._end_sessions(session, key)
        session.execute(f"SET LOCAL lock_timeout = '{SESSION_END_TIMEOUT_S}s'")
        try:
            session.execute("SELECT pg_advisory_lock(%s)", (key,))
        except pg_errors.LockNotAvailable:
            raise LockedError(
                f"environment {env!r} is locked by {who}, whose PostgreSQL session did not "
                f"end within {SESSION_END_TIMEOUT_S} s"
            ) from None

    @staticmethod
    def _end_sessions(session: psycopg.Connection[Any], key: int) -> None:
        """`--break-lock`: end the sessions holding `key` (its holder's next write fails)."""
        session.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND objsubid = 1 AND classid = %s::bigint::oid "
            "AND objid = %s::bigint::oid AND pid <> pg_backend_pid() "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (key >> 32, key & 0xFFFFFFFF),
        )

    def _unlock(self, session: psycopg.Connection[Any], me: LockInfo) -> None:
        """Remove the row if still `me`'s and end the session (and with it the advisory
        lock). A session ended by another's --break-lock took its lock with it."""
        with self._mu:
            if self._sessions.get(me.environment) is session:
                del self._sessions[me.environment]
        guard = self._key(f"guard\0{me.environment}")
        try:
            if not session.closed:
                with suppress(psycopg.OperationalError), session.transaction():
                    session.execute("SELECT pg_advisory_xact_lock(%s)", (guard,))
                    if me.same_holder(self._lock_row(session, me.environment)):
                        session.execute(
                            "DELETE FROM reconciler_locks WHERE environment = %s", (me.environment,)
                        )
                    return
            with self._tx(f"unlock {me.environment!r}") as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (guard,))
                if me.same_holder(self._lock_row(conn, me.environment)):
                    conn.execute(
                        "DELETE FROM reconciler_locks WHERE environment = %s", (me.environment,)
                    )
        except psycopg.Error as e:
            raise self._error(f"unlock {me.environment!r}", e) from None
        finally:
            session.close()

    # -- keys ------------------------------------------------------------------------

    def fingerprint_key(self, *, create: bool = True) -> bytes | None:
        """RECONCILER_FINGERPRINT_KEY of the injected environment when set (keeps the key
        out of the database), else a random key made once per state."""
        if create and self.read_only:
            raise read_only_error(self.url, "create the fingerprint key")
        env_key = fingerprint_key_from_env(self._env)
        if env_key:
            return env_key
        rows = self._query("SELECT value FROM reconciler_meta WHERE key = 'fingerprint_key'")
        if rows:
            return bytes.fromhex(rows[0][0])
        if not create:
            return None
        with self._tx("create the fingerprint key") as conn:
            conn.execute(
                "INSERT INTO reconciler_meta VALUES ('fingerprint_key', %s) "
                "ON CONFLICT (key) DO NOTHING",
                (secrets.token_hex(32),),
            )
            row = conn.execute(
                "SELECT value FROM reconciler_meta WHERE key = 'fingerprint_key'"
            ).fetchone()
        assert row is not None
        return bytes.fromhex(row[0])

    def import_fingerprint_key(self, key: bytes) -> None:
        with self._tx("import the fingerprint key") as conn:
            row = conn.execute(
                "SELECT value FROM reconciler_meta WHERE key = 'fingerprint_key' FOR UPDATE"
            ).fetchone()
            used = conn.execute("SELECT 1 FROM reconciler_applied LIMIT 1").fetchone()
            if row is not None and row[0] != key.hex() and used:
                raise other_key_error(self.url)
            conn.execute(
                "INSERT INTO reconciler_meta VALUES ('fingerprint_key', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (key.hex(),),
            )

    def close(self) -> None:
        with self._mu:
            sessions, self._sessions = list(self._sessions.values()), {}
            pool, self._pool = self._pool, None
        for session in sessions:
            session.close()
        if pool is not None:
            pool.close()
