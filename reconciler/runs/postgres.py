"""Executions in a `postgresql://` state: a table `reconciler_executions` beside the
state's tables (same database, same schema). The fire key is a UNIQUE column, so two
agents on one database never both record (and run) one schedule's fire."""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reconciler.errors import ConfigError, StateError
from reconciler.log import redact
from reconciler.runs.model import Execution, Query
from reconciler.runs.store import where
from reconciler.state.urls import mask_url

#: Serialises creating the table among processes opening one database at once.
_CREATE_LOCK = 0x7265636F6E657865  # "reconexe"
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS reconciler_executions (
        id TEXT PRIMARY KEY, environment TEXT NOT NULL, deployment TEXT NOT NULL,
        schedule TEXT, status TEXT NOT NULL, created_at TEXT NOT NULL,
        fire_key TEXT UNIQUE, doc JSONB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS reconciler_executions_by_env "
    "ON reconciler_executions (environment, created_at)",
    "CREATE INDEX IF NOT EXISTS reconciler_executions_by_status ON reconciler_executions (status)",
)
_INSERT = (
    "INSERT INTO reconciler_executions (id, environment, deployment, schedule, status, "
    "created_at, fire_key, doc) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)


def _row(ex: Execution) -> tuple[Any, ...]:
    doc = ex.document()
    return (
        ex.id, ex.environment, ex.deployment, ex.schedule, ex.status, doc["created_at"],
        ex.fire_key, json.dumps(doc),
    )  # fmt: skip


class PostgresExecutions:
    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = mask_url(url)
        self.read_only = read_only
        self._mu = threading.Lock()
        try:
            params: dict[str, Any] = conninfo_to_dict(url)
        except psycopg.ProgrammingError as e:
            raise ConfigError(
                f"state URL {self.url!r} is not a valid PostgreSQL URL: {e}"
            ) from None
        params.setdefault("connect_timeout", 10)
        params.setdefault("application_name", "reconciler")
        try:
            self._conn = psycopg.connect(make_conninfo(**params), autocommit=True)
        except psycopg.Error as e:
            raise self._error("open", e) from None
        self._exists = True
        with self._sql("open"):
            if read_only:
                row = self._conn.execute(
                    "SELECT to_regclass('reconciler_executions') IS NOT NULL"
                ).fetchone()
                self._exists = bool(row and row[0])
            else:
                with self._conn.transaction():
                    self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
                    for statement in _SCHEMA:
                        self._conn.execute(statement)  # type: ignore[arg-type]

    def _error(self, what: str, e: BaseException) -> StateError:
        text = redact(str(e).strip()) or type(e).__name__
        first, _, rest = text.partition("\n")
        return StateError(
            f"cannot {what} executions in state {self.url}: {first}", details=rest or None
        )

    @contextmanager
    def _sql(self, what: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as e:
            raise self._error(what, e) from None

    def _writable(self) -> None:
        if self.read_only:
            raise StateError(f"state {self.url} is open read-only: cannot record an execution")

    def add(self, ex: Execution) -> bool:
        self._writable()
        with self._mu, self._sql("record"):
            try:
                self._conn.execute(_INSERT, _row(ex))
            except pg_errors.UniqueViolation:
                return False
        return True

    def add_many(self, executions: Sequence[Execution]) -> list[bool]:
        self._writable()
        out = []
        with self._mu, self._sql("record"), self._conn.transaction():
            for ex in executions:
                cur = self._conn.execute(_INSERT + " ON CONFLICT DO NOTHING", _row(ex))
                out.append(cur.rowcount == 1)
        return out

    def transition(self, ex: Execution, from_statuses: Collection[str]) -> bool:
        self._writable()
        with self._mu, self._sql("record"):
            cur = self._conn.execute(
                "UPDATE reconciler_executions SET status = %s, doc = %s "
                "WHERE id = %s AND status = ANY(%s)",
                (ex.status, json.dumps(ex.document()), ex.id, list(from_statuses)),
            )
        return cur.rowcount == 1

    def get(self, execution_id: str) -> Execution | None:
        if not self._exists:
            return None
        with self._mu, self._sql("read"):
            row = self._conn.execute(
                "SELECT doc FROM reconciler_executions WHERE id = %s", (execution_id,)
            ).fetchone()
        return None if row is None else Execution.from_document(row[0])

    def last_fires(self, environment: str) -> dict[str, datetime]:
        if not self._exists:
            return {}
        with self._mu, self._sql("read"):
            rows = self._conn.execute(
                "SELECT schedule, MAX(doc->>'fire_time') FROM reconciler_executions "
                "WHERE environment = %s AND schedule IS NOT NULL GROUP BY schedule",
                (environment,),
            ).fetchall()
        return {name: datetime.fromisoformat(at) for name, at in rows if at}

    def find(self, query: Query) -> list[Execution]:
        if not self._exists:
            return []
        cond, args = where(query, "%s")
        sql = f"SELECT doc FROM reconciler_executions{cond} ORDER BY created_at DESC, id DESC"
        if query.limit is not None:
            sql += f" LIMIT {int(query.limit)}"
        with self._mu, self._sql("read"):
            rows = self._conn.execute(sql, args).fetchall()  # type: ignore[arg-type]
        return [Execution.from_document(r[0]) for r in rows]

    def prune(self, environment: str, keep: int) -> int:
        self._writable()
        with self._mu, self._sql("prune"):
            cur = self._conn.execute(
                "DELETE FROM reconciler_executions WHERE environment = %s AND status NOT IN "
                "('pending', 'running') AND id NOT IN (SELECT id FROM reconciler_executions "
                "WHERE environment = %s ORDER BY created_at DESC, id DESC LIMIT %s)",
                (environment, environment, keep),
            )
        return cur.rowcount

    def import_executions(self, executions: Sequence[Execution]) -> None:
        self._writable()
        with self._mu, self._sql("import"), self._conn.transaction():
            for ex in executions:
                self._conn.execute(_INSERT, _row(ex))

    def close(self) -> None:
        with self._mu:
            self._conn.close()
