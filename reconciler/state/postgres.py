"""`postgresql://` state storage (a `Backend`; the semantics are the `Store`'s): one
database shared by every runner, through psycopg 3 and a small connection pool. The
tables and rows are in postgres_schema.py, the lock sessions in postgres_lock.py.

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
next write then fails with StateMovedError, because every write checks (the store does),
under a row lock in its own transaction, that the lock row is still its own. Before each
provider write the executor asks `check_lock`: one query on the lock's own session (kept
alive with TCP keepalives from both ends), so a session lost to an idle timeout, a
network cut or pg_terminate_backend stops the run before its next provider call.
Decisions about a lock are made under a transaction-level advisory lock per environment,
so the advisory lock and the row always change together. Do not put a
transaction-pooling proxy (pgBouncer in transaction mode) between reconciler and the
server: it would break session locks.

Read-only stores (plan, drift, status, history) open read-only transactions and never
create or migrate the tables; a database without them reads as an empty state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from reconciler.errors import ConfigError, StateError
from reconciler.instances import InstanceKey
from reconciler.log import redact
from reconciler.state import postgres_schema as sql
from reconciler.state.backend import MissingRun, RunQuery, Tx, Write
from reconciler.state.base import (
    AppliedRecord,
    AppliedSummary,
    ChangeRecord,
    EnvironmentState,
    LockInfo,
    RunRecord,
    index_from_rows,
)
from reconciler.state.postgres_lock import (
    LOCK_SESSION_KEEPALIVES,
    SESSION_END_TIMEOUT_S,
    LockSessions,
    lock_session_params,
)
from reconciler.state.postgres_schema import SCHEMA_VERSION
from reconciler.state.urls import mask_url
from reconciler.vocabulary import RunOutcome

__all__ = [
    "LOCK_SESSION_KEEPALIVES",
    "POOL_SIZE",
    "SCHEMA_VERSION",
    "SESSION_END_TIMEOUT_S",
    "PostgresBackend",
    "lock_session_params",
]

T = TypeVar("T")
#: Connections per store besides one per held lock: the executor records from a few
#: threads; twenty runners must stay well under the server's max_connections (100).
POOL_SIZE = 4


class PostgresBackend:
    """`postgresql://user@host[:port]/dbname[?param=value...]` (libpq's URL)."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = mask_url(url)
        self._read_only = read_only
        self.params = self._conninfo(url)
        self._empty = False
        with self._direct() as conn:
            self._namespace = self._schema_name(conn)
            version = sql.schema_version(conn, self.url)
            if read_only:
                self._empty = version == 0
            elif version < SCHEMA_VERSION:
                sql.migrate(conn, self.url, self._namespace)
        self._locks = LockSessions(self)
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        if not self._empty:
            self._pool = ConnectionPool(
                make_conninfo(**self.params),
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
        if self._read_only:
            options.append("-c default_transaction_read_only=on")
        params["options"] = " ".join(o for o in options if o)
        return params

    def error(self, what: str, e: BaseException) -> StateError:
        """One line saying why (the server's words, never the URL's password)."""
        text = redact(str(e).strip()) or type(e).__name__
        first, _, rest = text.partition("\n")
        doing = f"{what} state" if what == "open" else f"{what} in state"
        return StateError(f"cannot {doing} {self.url}: {first}", details=rest or None)

    @contextmanager
    def _direct(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of its own (not the pool's), closed after the block."""
        try:
            conn = psycopg.connect(make_conninfo(**self.params), autocommit=True)
        except psycopg.Error as e:
            raise self.error("open", e) from None
        try:
            yield conn
        except psycopg.Error as e:
            raise self.error("open", e) from None
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

    def key(self, what: str) -> int:
        return sql.advisory_key(self._namespace, what)

    @contextmanager
    def connection(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        if self._pool is None:
            raise StateError(f"state {self.url} is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.Error, PoolTimeout) as e:
            raise self.error(what, e) from None

    def _query(self, statement: LiteralString, args: Sequence[Any] = ()) -> list[Any]:
        if self._empty:
            return []
        with self.connection("read") as conn:
            return conn.execute(statement, args).fetchall()

    def lock_row(
        self, conn: psycopg.Connection[Any], environment: str, *, share: bool = False
    ) -> LockInfo | None:
        statement: LiteralString = sql.LOCK_SQL + (" FOR SHARE" if share else "")
        row = conn.execute(statement, (environment,)).fetchone()
        return sql.lock_info(row) if row else None

    def tx(self, conn: psycopg.Connection[Any]) -> _Tx:
        return _Tx(self, conn)

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
        self, environment: str, keys: Sequence[InstanceKey] | None
    ) -> dict[InstanceKey, AppliedRecord]:
        base: LiteralString = f"SELECT {sql.APPLIED_COLUMNS} FROM reconciler_applied "
        if keys is None:
            rows = self._query(base + "WHERE environment = %s ORDER BY kind, name", (environment,))
        elif len(keys) == 1:  # the executor asks per change: one primary-key lookup
            rows = self._query(
                base + "WHERE environment = %s AND kind = %s AND name = %s", tuple(keys[0])
            )
        else:
            rows = self._query(
                base + "WHERE environment = %s AND (kind, name) IN "
                "(SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY kind, name",
                (environment, [k.kind for k in keys], [k.name for k in keys]),
            )
        return {InstanceKey(*r[:3]): sql.applied_record(r) for r in rows}

    def applied_index(self, environment: str) -> dict[InstanceKey, AppliedSummary]:
        rows = self._query(
            "SELECT kind, name, provider, spec_hash, secret_fingerprints::text "
            "FROM reconciler_applied WHERE environment = %s",
            (environment,),
        )
        return index_from_rows(environment, rows)

    def runs(self, query: RunQuery) -> list[RunRecord]:
        where: list[LiteralString] = []
        args: list[Any] = []
        for condition, value in (
            ("environment = %s", query.environment), ("id = %s", query.run_id),
            ("commit_sha = %s", query.commit), ("outcome = %s", query.outcome),
            ("trigger <> %s", query.skip_trigger),
        ):  # fmt: skip
            if value is not None:
                where.append(condition)
                args.append(value)
        statement = sql.RUN_SQL + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._query(
            statement + " ORDER BY started_at DESC, ord DESC LIMIT %s", (*args, query.limit)
        )
        changes: dict[str, list[ChangeRecord]] = {r[0]: [] for r in rows}
        if rows and query.changes:
            for row in self._query(
                f"SELECT {sql.CHANGE_COLUMNS} FROM reconciler_changes WHERE run_id = ANY(%s) "
                "ORDER BY run_id, seq",
                (list(changes),),
            ):
                changes[row[0]].append(sql.change_record(row))
        return [sql.run_record(r, changes[r[0]]) for r in rows]

    def holder(self, environment: str) -> LockInfo | None:
        if self._empty:
            return None
        with self.connection("read") as conn:
            return self.lock_row(conn, environment)

    def stored_key(self) -> bytes | None:
        rows = self._query("SELECT value FROM reconciler_meta WHERE key = 'fingerprint_key'")
        return bytes.fromhex(rows[0][0]) if rows else None

    # -- writes ----------------------------------------------------------------------

    def transact(self, write: Write, fn: Callable[[Tx], T]) -> T:
        """In one pipeline: the statements go out together and are answered at the first
        read of a result (a change costs two round trips: its writes with the lock
        check, then COMMIT)."""
        with self.connection(write.what) as conn, conn.pipeline(), conn.transaction():
            tx = _Tx(self, conn)
            result = fn(tx)
            tx.settle()
            return result

    def lock(
        self, me: LockInfo, *, break_lock: bool, taken_over: Callable[[Tx, LockInfo], None]
    ) -> None:
        self._locks.lock(me, break_lock=break_lock, taken_over=taken_over)

    def unlock(self, me: LockInfo) -> None:
        self._locks.unlock(me)

    def check_lock(self, me: LockInfo) -> LockInfo | None:
        return self._locks.check(me)

    def close(self) -> None:
        self._locks.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


class _Tx:
    """One transaction on `conn`; an appended change's run is checked by `settle`."""

    def __init__(self, backend: PostgresBackend, conn: psycopg.Connection[Any]) -> None:
        self._b = backend
        self._conn = conn
        self._appended: list[tuple[str, psycopg.Cursor[Any]]] = []

    def settle(self) -> None:
        """MissingRun for a change appended to no run (its result is read here)."""
        for run_id, cur in self._appended:
            if cur.fetchone() is None:
                raise MissingRun(run_id)

    def lock_row(self, environment: str) -> LockInfo | None:
        return self._b.lock_row(self._conn, environment, share=True)

    def knows(self, environment: str) -> bool:
        self._conn.execute(
            "SELECT pg_advisory_xact_lock(%s)", (self._b.key(f"guard\0{environment}"),)
        )
        row = self._conn.execute(
            "SELECT 1 FROM reconciler_runs WHERE environment = %(e)s UNION ALL "
            "SELECT 1 FROM reconciler_applied WHERE environment = %(e)s UNION ALL "
            "SELECT 1 FROM reconciler_serials WHERE environment = %(e)s LIMIT 1",
            {"e": environment},
        ).fetchone()
        return row is not None

    def run(self, run_id: str) -> RunRecord | None:
        row = self._conn.execute(sql.RUN_SQL + " WHERE id = %s", (run_id,)).fetchone()
        return None if row is None else sql.run_record(row, [])

    def add_run(self, run: RunRecord) -> None:
        self._conn.execute(sql.INSERT_RUN, sql.run_row(run))

    def append_change(self, run_id: str, change: ChangeRecord, at: datetime) -> None:
        cur = self._conn.execute(sql.APPEND_CHANGE, (run_id, *sql.change_values(change, at)))
        self._appended.append((run_id, cur))

    def end_run(
        self,
        run_id: str,
        outcome: RunOutcome,
        finished_at: datetime,
        details: dict[str, Any] | None,
    ) -> None:
        row = self._conn.execute(
            "UPDATE reconciler_runs SET outcome = %s, finished_at = %s, "
            "details = COALESCE(%s, details) WHERE id = %s RETURNING id",
            (outcome, finished_at, None if details is None else sql.as_json(details), run_id),
        ).fetchone()
        if row is None:
            raise MissingRun(run_id)

    def put_applied(self, record: AppliedRecord) -> None:
        self._conn.execute(sql.UPSERT_APPLIED, sql.applied_row(record))

    def delete_applied(self, key: InstanceKey) -> None:
        self._conn.execute(
            "DELETE FROM reconciler_applied WHERE environment = %s AND kind = %s AND name = %s",
            tuple(key),
        )

    def bump_serial(self, environment: str) -> None:
        self._conn.execute(sql.BUMP_SERIAL, (environment,))

    def put_environment(self, state: EnvironmentState) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(sql.INSERT_RUN, [sql.run_row(r, len(r.changes)) for r in state.runs])
            cur.executemany(
                sql.INSERT_CHANGE,
                [
                    (run.id, seq, *sql.change_values(c, c.at or run.started_at))
                    for run in state.runs
                    for seq, c in enumerate(run.changes, 1)
                ],
            )
            cur.executemany(sql.INSERT_APPLIED, [sql.applied_row(r) for r in state.applied])
        if state.serial:
            self._conn.execute(
                "INSERT INTO reconciler_serials VALUES (%s, %s)", (state.environment, state.serial)
            )

    def key(self) -> bytes | None:
        row = self._conn.execute(
            "SELECT value FROM reconciler_meta WHERE key = 'fingerprint_key' FOR UPDATE"
        ).fetchone()
        return None if row is None else bytes.fromhex(row[0])

    def put_key(self, key: bytes, *, replace: bool) -> bytes:
        """Without `replace`, a key another process stored first wins (and is returned)."""
        self._conn.execute(
            "INSERT INTO reconciler_meta VALUES ('fingerprint_key', %s) ON CONFLICT (key) "
            + ("DO UPDATE SET value = EXCLUDED.value" if replace else "DO NOTHING"),
            (key.hex(),),
        )
        stored = self.key()
        assert stored is not None
        return stored

    def any_applied(self) -> bool:
        return self._conn.execute("SELECT 1 FROM reconciler_applied LIMIT 1").fetchone() is not None
