"""The embedded default state backend: one SQLite file, one transaction per write.
Storage only (`backend.Backend`); the semantics are the `Store`'s (store.py).

Durability: WAL with `synchronous=NORMAL`. Every `record_change` is its own committed
transaction; in WAL mode a commit is in the WAL file (the OS page cache) when the call
returns, so a crashed or killed process (`kill -9`, OOM) loses nothing it recorded: the
next open replays the WAL. Only an operating-system crash or power loss can drop the last
few commits (never corrupt the file). `FULL` would fsync every change: about 3x slower
here, far worse on network disks, for an apply that records 25,000 changes one by one.
A change lost that way is not duplicated either: a re-run asks providers by name first.

Locks live in the same file, so they work across processes sharing it. The lock row
records the holder's machine identity (boot id and pid namespace); a holder is taken
over automatically only when it is stale by `base.is_stale` (same host, same machine
identity, pid dead, e.g. after `kill -9`), and its run is marked `interrupted`. A live
holder elsewhere (another container sharing the volume) needs `--break-lock`, after which
the old holder's next write fails with StateMovedError and writes nothing.

Read-only stores (plan, drift, status, history, approvals, watch) open the file with
`mode=ro` and never create or migrate it; a missing file reads as an empty state.
An older schema that this version reads compatibly (1: no machine identity in locks) is
read as is; apply migrates it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from reconciler.errors import StateError
from reconciler.instances import InstanceKey
from reconciler.state import sqlite_schema as schema
from reconciler.state.backend import MissingRun, RunQuery, Tx, Write
from reconciler.state.base import (
    AppliedRecord,
    AppliedSummary,
    ChangeRecord,
    EnvironmentState,
    LockInfo,
    RunRecord,
    check_takeover,
    index_from_rows,
)
from reconciler.state.sqlite_schema import SCHEMA_VERSION
from reconciler.state.store import Store
from reconciler.vocabulary import RunOutcome

__all__ = ["SCHEMA_VERSION", "SQLiteBackend", "SQLiteState"]

T = TypeVar("T")
#: Keys per query of `applied(keys=...)`: two parameters each, under SQLite's 999.
KEYS_PER_QUERY = 400


class SQLiteBackend:
    """`sqlite:///relative/to/repo.db` or `sqlite:////absolute/path.db`."""

    def __init__(self, path: Path, *, url: str | None = None, read_only: bool = False) -> None:
        self.url = url or f"sqlite:///{path}"
        self.path = path
        self._mu = threading.RLock()
        #: The next change number of the run written last, so a change costs no MAX(seq)
        #: query (only the lock holder writes a run's changes).
        self._next_seq: dict[str, int] = {}
        #: The lock row last read and what it reads as (a held lock is read per write).
        self._lock_seen: tuple[tuple[Any, ...], LockInfo] | None = None
        self._version = SCHEMA_VERSION
        try:
            self._db = self._open_read_only() if read_only else self._open_writable()
        except sqlite3.Error as e:
            raise StateError(f"cannot open state {self.url}: {e}") from None
        except OSError as e:
            raise StateError(f"cannot open state {self.url}: {e.strerror}") from None
        #: Schema 1 has no machine identity in locks: read it as unknown ("").
        machine = "machine" if self._version >= 2 else "''"
        self._lock_sql = (
            f"SELECT environment, run_id, user, host, pid, acquired_at, {machine} "
            "FROM locks WHERE environment = ?"
        )
        #: Schemas before 3 recorded no policies or diffs: read them as none.
        policy, diff = ("policy", "diff") if self._version >= 3 else ("NULL", "'[]'")
        self._run_sql = (
            "SELECT id, environment, commit_sha, trigger, started_at, finished_at, outcome, "
            "pull_request, author, approvers, reverted_commits, reverted_runs, details, "
            f"{policy} FROM runs"
        )
        self._change_sql = (
            "SELECT run_id, environment, kind, name, action, outcome, error, provider_id, "
            f"before_hash, after_hash, at, {diff} FROM changes"
        )

    # -- plumbing --------------------------------------------------------------------

    def _open_writable(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # see the module docstring
            db.execute("PRAGMA foreign_keys=ON")
            schema.migrate(db, self.url)
        except BaseException:
            db.close()
            raise
        return db

    def _open_read_only(self) -> sqlite3.Connection:
        """`mode=ro` on the file; a missing (or empty) file is an empty in-memory state."""
        if self.path.is_file():
            uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
            db = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30
            )
            try:
                db.execute("PRAGMA query_only=ON")
                version = schema.readable_version(db, self.url)
            except BaseException:
                db.close()
                raise
            if version is not None:
                self._version = version
                return db
            db.close()
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        schema.migrate(db, self.url)
        return db

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._mu:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StateError(f"cannot read state {self.url}: {e}") from None

    def lock_row(self, db: sqlite3.Connection, environment: str) -> LockInfo | None:
        row = db.execute(self._lock_sql, (environment,)).fetchone()
        if row is None:
            return None
        seen = self._lock_seen
        if seen is None or seen[0] != row:
            seen = self._lock_seen = (row, schema.lock_info(row))
        return seen[1]

    # -- reads -----------------------------------------------------------------------

    def serial(self, environment: str) -> int:
        rows = self._query("SELECT serial FROM serials WHERE environment = ?", (environment,))
        return int(rows[0][0]) if rows else 0

    def serials(self) -> dict[str, int]:
        return {e: int(s) for e, s in self._query("SELECT environment, serial FROM serials")}

    def environments(self) -> list[str]:
        rows = self._query(
            "SELECT environment FROM applied UNION SELECT environment FROM runs ORDER BY 1"
        )
        return [r[0] for r in rows]

    def applied(
        self, environment: str, keys: Sequence[InstanceKey] | None
    ) -> dict[InstanceKey, AppliedRecord]:
        if keys is None:
            rows = self._query(
                f"SELECT {schema.APPLIED_COLUMNS} FROM applied WHERE environment = ? "
                "ORDER BY kind, name",
                (environment,),
            )
            return {InstanceKey(*r[:3]): schema.applied_record(r) for r in rows}
        if len(keys) == 1:  # the executor asks per change: one primary-key lookup
            rows = self._query(
                f"SELECT {schema.APPLIED_COLUMNS} FROM applied "
                "WHERE environment = ? AND kind = ? AND name = ?",
                tuple(keys[0]),
            )
        else:
            rows = []
            for i in range(0, len(keys), KEYS_PER_QUERY):
                chunk = keys[i : i + KEYS_PER_QUERY]
                values = ",".join("(?,?)" for _ in chunk)
                rows += self._query(
                    f"WITH wanted (kind, name) AS (VALUES {values}) "
                    f"SELECT {schema.APPLIED_COLUMNS} FROM wanted "
                    "CROSS JOIN applied USING (kind, name) "
                    "WHERE applied.environment = ?",
                    (*(x for k in chunk for x in (k.kind, k.name)), environment),
                )
        return {r.key: r for r in sorted(map(schema.applied_record, rows), key=lambda r: r.key)}

    def applied_index(self, environment: str) -> dict[InstanceKey, AppliedSummary]:
        rows = self._query(
            "SELECT kind, name, provider, spec_hash, secret_fingerprints FROM applied "
            "WHERE environment = ?",
            (environment,),
        )
        return index_from_rows(environment, rows)

    def runs(self, query: RunQuery) -> list[RunRecord]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("environment =", query.environment), ("id =", query.run_id),
            ("commit_sha =", query.commit), ("outcome =", query.outcome),
            ("trigger <>", query.skip_trigger),
        ):  # fmt: skip
            if value is not None:
                where.append(f"{column} ?")
                args.append(value)
        sql = self._run_sql + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY started_at DESC, rowid DESC"
        if query.limit is not None:
            sql += f" LIMIT {int(query.limit)}"
        rows = self._query(sql, tuple(args))
        changes: dict[str, list[ChangeRecord]] = {r[0]: [] for r in rows}
        if rows and query.changes:
            marks = ",".join("?" * len(changes))
            for row in self._query(
                f"{self._change_sql} WHERE run_id IN ({marks}) ORDER BY run_id, seq",
                tuple(changes),
            ):
                changes[row[0]].append(schema.change_record(row))
        return [schema.run_record(r, changes[r[0]]) for r in rows]

    def holder(self, environment: str) -> LockInfo | None:
        with self._mu:
            try:
                return self.lock_row(self._db, environment)
            except sqlite3.Error as e:
                raise StateError(f"cannot read state {self.url}: {e}") from None

    def stored_key(self) -> bytes | None:
        rows = self._query("SELECT value FROM meta WHERE key = 'fingerprint_key'")
        return bytes.fromhex(rows[0][0]) if rows else None

    # -- writes ----------------------------------------------------------------------

    def transact(self, write: Write, fn: Callable[[Tx], T]) -> T:
        """IMMEDIATE, so two processes never interleave writes."""
        with self._mu:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StateError(f"cannot write state {self.url}: {e}") from None
            tx = _Tx(self, self._db)
            try:
                result = fn(tx)
                self._db.execute("COMMIT")
            except BaseException as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StateError(f"cannot {write.what} in state {self.url}: {e}") from None
                raise
            if tx.next_seq is not None:  # kept only once committed
                self._next_seq = dict([tx.next_seq])
            return result

    def lock(
        self, me: LockInfo, *, break_lock: bool, taken_over: Callable[[Tx, LockInfo], None]
    ) -> None:
        env = me.environment

        def acquire(tx: Tx) -> None:
            holder = tx.lock_row(env)
            if holder is not None and check_takeover(holder, me, break_lock=break_lock):
                taken_over(tx, holder)
                self._db.execute("DELETE FROM locks WHERE environment = ?", (env,))
            self._db.execute(
                "INSERT INTO locks (environment, run_id, user, host, pid, acquired_at, machine) "
                "VALUES (?,?,?,?,?,?,?)",
                (env, me.run_id, me.user, me.host, me.pid, me.acquired_at.isoformat(),
                 me.machine),
            )  # fmt: skip

        self.transact(Write(f"lock {env!r}", f"lock {env}"), acquire)

    def unlock(self, me: LockInfo) -> None:
        env = me.environment

        def release(tx: Tx) -> None:
            if me.same_holder(tx.lock_row(env)):
                self._db.execute("DELETE FROM locks WHERE environment = ?", (env,))

        self.transact(Write(f"unlock {env!r}", f"unlock {env}"), release)

    def check_lock(self, me: LockInfo) -> LockInfo | None:
        """One read of the lock row: another process's --break-lock replaced it."""
        return self.holder(me.environment)

    def close(self) -> None:
        with self._mu:
            self._db.close()


class _Tx:
    """One `BEGIN IMMEDIATE` transaction of a SQLiteBackend."""

    def __init__(self, backend: SQLiteBackend, db: sqlite3.Connection) -> None:
        self._b = backend
        self._db = db
        #: (run, its next change number) once a change was appended.
        self.next_seq: tuple[str, int] | None = None

    def lock_row(self, environment: str) -> LockInfo | None:
        return self._b.lock_row(self._db, environment)

    def knows(self, environment: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM runs WHERE environment = :e UNION ALL "
            "SELECT 1 FROM applied WHERE environment = :e UNION ALL "
            "SELECT 1 FROM serials WHERE environment = :e LIMIT 1",
            {"e": environment},
        ).fetchone()
        return row is not None

    def run(self, run_id: str) -> RunRecord | None:
        row = self._db.execute(f"{self._b._run_sql} WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else schema.run_record(row, [])

    def add_run(self, run: RunRecord) -> None:
        schema.insert_run(self._db, run)

    def append_change(self, run_id: str, change: ChangeRecord, at: datetime) -> None:
        seq = self._b._next_seq.pop(run_id, None)
        if seq is None:
            (seq,) = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM changes WHERE run_id = ?", (run_id,)
            ).fetchone()
            if seq == 1 and self.run(run_id) is None:
                raise MissingRun(run_id)
        schema.insert_change(self._db, run_id, seq, change, at)
        self.next_seq = (run_id, seq + 1)

    def end_run(
        self,
        run_id: str,
        outcome: RunOutcome,
        finished_at: datetime,
        details: dict[str, Any] | None,
    ) -> None:
        if details is None:
            cur = self._db.execute(
                "UPDATE runs SET outcome = ?, finished_at = ? WHERE id = ?",
                (outcome, finished_at.isoformat(), run_id),
            )
        else:
            cur = self._db.execute(
                "UPDATE runs SET outcome = ?, finished_at = ?, details = ? WHERE id = ?",
                (outcome, finished_at.isoformat(), json.dumps(details, sort_keys=True), run_id),
            )
        if cur.rowcount == 0:
            raise MissingRun(run_id)

    def put_applied(self, record: AppliedRecord) -> None:
        schema.insert_applied(self._db, record)

    def delete_applied(self, key: InstanceKey) -> None:
        self._db.execute(
            "DELETE FROM applied WHERE environment = ? AND kind = ? AND name = ?", tuple(key)
        )

    def bump_serial(self, environment: str) -> None:
        self._db.execute(
            "INSERT INTO serials VALUES (?, 1) "
            "ON CONFLICT (environment) DO UPDATE SET serial = serial + 1",
            (environment,),
        )

    def put_environment(self, state: EnvironmentState) -> None:
        for run in state.runs:
            schema.insert_run(self._db, run)
            for seq, change in enumerate(run.changes, 1):
                schema.insert_change(self._db, run.id, seq, change, change.at or run.started_at)
        for record in state.applied:
            schema.insert_applied(self._db, record)
        if state.serial:
            self._db.execute("INSERT INTO serials VALUES (?, ?)", (state.environment, state.serial))

    def key(self) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'fingerprint_key'").fetchone()
        return None if row is None else bytes.fromhex(row[0])

    def put_key(self, key: bytes, *, replace: bool) -> bytes:
        if not replace and (stored := self.key()) is not None:
            return stored
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('fingerprint_key', ?)", (key.hex(),))
        return key

    def any_applied(self) -> bool:
        return self._db.execute("SELECT 1 FROM applied LIMIT 1").fetchone() is not None


class SQLiteState(Store):
    """A Store over the SQLite file at `path` (what `open_state` makes of a sqlite URL)."""

    def __init__(
        self,
        path: Path,
        *,
        env: Mapping[str, str],
        url: str | None = None,
        read_only: bool = False,
    ) -> None:
        super().__init__(SQLiteBackend(path, url=url, read_only=read_only), env=env,
                         read_only=read_only)  # fmt: skip
