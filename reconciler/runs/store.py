"""Where executions are kept: beside the recorded state, in the same backend.

Storage stays dumb: an execution is one JSON document with a few indexed columns
(environment, deployment, status, creation time, and the fire key that makes a
schedule's fire unique). The semantics live above it: `transition` is the one
compare-and-set every status change goes through (so a `replace`d execution's late
answer never overwrites `cancelled`), `add` refuses a second execution with the same
fire key (exactly once per schedule, environment and fire time, across processes and
machines), `reap` marks executions whose process died. `runs/testing.py` is the
contract, run against each backend.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from reconciler.errors import ConfigError, StateError
from reconciler.runs.model import ABANDON_GRACE, INTERRUPTED, Execution, Holder, Query

_BUSY_TIMEOUT_S = 30.0


class ExecutionStore(Protocol):
    url: str
    read_only: bool

    def add(self, ex: Execution) -> bool:
        """Record a new execution; False (nothing written) when one with its fire key
        exists already: another process fired it."""
        ...

    def add_many(self, executions: Sequence[Execution]) -> list[bool]:
        """`add` of each, in one transaction: what a tick of many due schedules records
        before any call starts. True for each one recorded."""
        ...

    def transition(self, ex: Execution, from_statuses: Collection[str]) -> bool:
        """Write `ex` whole, only if its recorded status is still one of
        `from_statuses`; False when it moved on (cancelled, reaped) meanwhile."""
        ...

    def get(self, execution_id: str) -> Execution | None: ...

    def last_fires(self, environment: str) -> dict[str, datetime]:
        """Each schedule's latest recorded fire time in `environment`: where the firing
        engine looks for fires from (one read for every schedule)."""
        ...

    def find(self, query: Query) -> list[Execution]:
        """Newest first."""
        ...

    def prune(self, environment: str, keep: int) -> int:
        """Drop all but the newest `keep` finished executions of `environment`."""
        ...

    def import_executions(self, executions: Sequence[Execution]) -> None:
        """Write executions another backend recorded (state migrate), all or nothing."""
        ...

    def close(self) -> None: ...


def reap(store: ExecutionStore, now: datetime | None = None) -> list[Execution]:
    """Mark `failed` every pending or running execution whose holder is known dead (same
    machine, pid gone: the lock rule), like an interrupted run, or that is past its
    deadline by ABANDON_GRACE (a holder elsewhere cannot be seen to die, but cannot outlive
    its deadline): a kill -9 mid-call, here or on another machine, leaves an honest record
    for the next reader. Status changes are compare-and-set, so an outcome recorded
    meanwhile wins. Read-only stores only look."""
    if store.read_only:
        return []
    at = now or datetime.now(UTC)
    out = []
    for ex in store.find(Query(statuses=("pending", "running"), limit=None)):
        if ex.holder is not None and ex.holder.gone():
            why = INTERRUPTED
        elif (
            ex.deadline is not None
            and at > ex.deadline + ABANDON_GRACE
            and not (ex.holder is not None and ex.holder.alive_here())
        ):
            holder = ex.holder or Holder("an unknown host", "", 0)
            why = holder.abandoned_text(ex.deadline)
        else:
            continue
        prior = ex.status
        ex.status = "failed"
        ex.finished_at = at
        ex.error = why
        if store.transition(ex, (prior,)):
            out.append(ex)
    return out


def refuse_executions(target: ExecutionStore) -> None:
    """`state migrate` never merges two histories of executions either."""
    if target.find(Query(limit=1)):
        raise StateError(
            f"state {target.url} already has executions: refusing to merge two histories; "
            "nothing was copied"
        )


def copy_executions(source: ExecutionStore, target: ExecutionStore) -> int:
    """Every execution of `source` into `target` (`state migrate`), oldest first."""
    found = source.find(Query(limit=None))[::-1]
    if found:
        target.import_executions(found)
    return len(found)


def open_executions(
    url: str, *, repo_root: Path, env: Mapping[str, str], read_only: bool = False
) -> ExecutionStore:
    """The executions of the state at `url` (the same URLs as `open_state`)."""
    if url.startswith("sqlite://"):
        rest = url.removeprefix("sqlite://")
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(
                f"state URL {url!r} needs a path: sqlite:///relative.db or sqlite:////abs.db"
            )
        raw = rest[1:]
        path = Path(raw) if raw.startswith("/") else repo_root / raw
        return SQLiteExecutions(path, url=url, read_only=read_only)
    if url.startswith(("postgresql://", "postgres://")):
        from reconciler.runs.postgres import PostgresExecutions

        return PostgresExecutions(url, read_only=read_only)
    if url.startswith("git://"):
        from reconciler.runs.gitstore import GitExecutions

        return GitExecutions(repo_root, url, read_only=read_only)
    from reconciler.state import open_state  # its error names the schemes

    open_state(url, repo_root=repo_root, env=env, read_only=True).close()
    raise ConfigError(f"no executions for state {url!r}")


_SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS executions (
        id TEXT PRIMARY KEY, environment TEXT NOT NULL, deployment TEXT NOT NULL,
        schedule TEXT, status TEXT NOT NULL, created_at TEXT NOT NULL,
        fire_key TEXT UNIQUE, doc TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS executions_by_env ON executions (environment, created_at)",
    "CREATE INDEX IF NOT EXISTS executions_by_status ON executions (status)",
    "CREATE INDEX IF NOT EXISTS executions_by_schedule "
    "ON executions (environment, schedule, created_at)",
)


def where(query: Query, param: str = "?") -> tuple[str, list[object]]:
    """The SQL condition (and its parameters) of `query`, shared by SQL backends."""
    clauses: list[str] = []
    args: list[object] = []
    for column, values in (
        ("environment", query.environments),
        ("deployment", query.deployments),
        ("status", query.statuses),
    ):
        if values:
            clauses.append(f"{column} IN ({', '.join([param] * len(values))})")
            args += values
    if query.schedule is not None:
        clauses.append(f"schedule = {param}")
        args.append(query.schedule)
    if query.since is not None:
        clauses.append(f"created_at >= {param}")
        args.append(query.since.astimezone(UTC).isoformat(timespec="microseconds"))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _sqlite_row(ex: Execution) -> tuple[object, ...]:
    return (
        ex.id, ex.environment, ex.deployment, ex.schedule, ex.status,
        ex.document()["created_at"], ex.fire_key, ex.to_json(),
    )  # fmt: skip


class SQLiteExecutions:
    """A table `executions` in the state's SQLite file, on a connection of its own."""

    def __init__(self, path: Path, *, url: str, read_only: bool = False) -> None:
        self.url = url
        self.path = path
        self.read_only = read_only
        self._mu = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            if read_only:
                if path.exists():
                    db = sqlite3.connect(
                        f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
                    )
                    has = db.execute(
                        "SELECT 1 FROM sqlite_master WHERE name = 'executions'"
                    ).fetchone()
                    self._db = db if has else None
                    if not has:
                        db.close()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(
                    path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
                )
                db.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                for statement in _SQLITE_SCHEMA:
                    db.execute(statement)
                self._db = db
        except sqlite3.Error as e:
            raise StateError(f"cannot open the executions of state {url}: {e}") from None
        except OSError as e:
            raise StateError(f"cannot open the executions of state {url}: {e.strerror}") from None

    def _writable(self) -> sqlite3.Connection:
        if self.read_only or self._db is None:
            raise StateError(f"state {self.url} is open read-only: cannot record an execution")
        return self._db

    def _fail(self, what: str, e: sqlite3.Error) -> StateError:
        return StateError(f"state {self.url}: cannot {what}: {e}")

    def add(self, ex: Execution) -> bool:
        with self._mu:
            db = self._writable()
            try:
                db.execute(
                    "INSERT INTO executions (id, environment, deployment, schedule, status, "
                    "created_at, fire_key, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        ex.id, ex.environment, ex.deployment, ex.schedule, ex.status,
                        ex.document()["created_at"], ex.fire_key, ex.to_json(),
                    ),
                )  # fmt: skip
            except sqlite3.IntegrityError:
                return False
            except sqlite3.Error as e:
                raise self._fail("record an execution", e) from None
        return True

    def add_many(self, executions: Sequence[Execution]) -> list[bool]:
        out = []
        with self._mu:
            db = self._writable()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for ex in executions:
                        cur = db.execute(
                            "INSERT OR IGNORE INTO executions (id, environment, deployment, "
                            "schedule, status, created_at, fire_key, doc) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            _sqlite_row(ex),
                        )
                        out.append(cur.rowcount == 1)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as e:
                raise self._fail("record executions", e) from None
        return out

    def transition(self, ex: Execution, from_statuses: Collection[str]) -> bool:
        marks = ", ".join("?" * len(from_statuses))
        with self._mu:
            db = self._writable()
            try:
                cur = db.execute(
                    "UPDATE executions SET status = ?, doc = ?"
                    f" WHERE id = ? AND status IN ({marks})",
                    (ex.status, ex.to_json(), ex.id, *from_statuses),
                )
            except sqlite3.Error as e:
                raise self._fail("record an execution", e) from None
        return cur.rowcount == 1

    def get(self, execution_id: str) -> Execution | None:
        if self._db is None:
            return None
        with self._mu:
            row = self._db.execute(
                "SELECT doc FROM executions WHERE id = ?", (execution_id,)
            ).fetchone()
        return None if row is None else Execution.from_document(json.loads(row[0]))

    def last_fires(self, environment: str) -> dict[str, datetime]:
        if self._db is None:
            return {}
        with self._mu:
            rows = self._db.execute(
                "SELECT schedule, MAX(json_extract(doc, '$.fire_time')) FROM executions "
                "WHERE environment = ? AND schedule IS NOT NULL GROUP BY schedule",
                (environment,),
            ).fetchall()
        return {name: datetime.fromisoformat(at) for name, at in rows if at}

    def find(self, query: Query) -> list[Execution]:
        if self._db is None:
            return []
        cond, args = where(query)
        sql = f"SELECT doc FROM executions{cond} ORDER BY created_at DESC, id DESC"
        if query.limit is not None:
            sql += f" LIMIT {int(query.limit)}"
        with self._mu:
            rows = self._db.execute(sql, args).fetchall()
        return [Execution.from_document(json.loads(r[0])) for r in rows]

    def prune(self, environment: str, keep: int) -> int:
        with self._mu:
            db = self._writable()
            cur = db.execute(
                "DELETE FROM executions WHERE environment = ? AND status NOT IN "
                "('pending', 'running') AND id NOT IN (SELECT id FROM executions "
                "WHERE environment = ? ORDER BY created_at DESC, id DESC LIMIT ?)",
                (environment, environment, keep),
            )
        return cur.rowcount

    def import_executions(self, executions: Sequence[Execution]) -> None:
        with self._mu:
            db = self._writable()
            try:
                db.execute("BEGIN IMMEDIATE")
                for ex in executions:
                    db.execute(
                        "INSERT INTO executions (id, environment, deployment, schedule, "
                        "status, created_at, fire_key, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            ex.id, ex.environment, ex.deployment, ex.schedule, ex.status,
                            ex.document()["created_at"], ex.fire_key, ex.to_json(),
                        ),
                    )  # fmt: skip
                db.execute("COMMIT")
            except sqlite3.Error as e:
                db.execute("ROLLBACK")
                raise self._fail("import executions", e) from None

    def close(self) -> None:
        with self._mu:
            if self._db is not None:
                self._db.close()
                self._db = None
