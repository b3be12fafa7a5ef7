"""The embedded default state backend: one SQLite file, one transaction per change.

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
`mode=ro` and never create, migrate or write it; a missing file reads as an empty state.
An older schema that this version reads compatibly (1: no machine identity in locks) is
read as is; apply migrates it.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from reconciler.errors import StateError
from reconciler.instances import InstanceKey, canonical_json
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


#: _MIGRATIONS[n] takes a database at schema n to n + 1, inside one transaction.
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _run_script(_SCHEMA_V1),
    _run_script(_SCHEMA_V2),
    _run_script(_SCHEMA_V3),
]
assert len(_MIGRATIONS) == SCHEMA_VERSION

_APPLIED_COLUMNS = (
    "environment, kind, name, provider, provider_id, spec, spec_hash, "
    "secret_fingerprints, commit_sha, run_id, applied_at"
)
#: Keys per query of `applied(keys=...)`: two parameters each, under SQLite's 999.
_KEYS_PER_QUERY = 400


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _applied_record(row: tuple[Any, ...]) -> AppliedRecord:
    env, kind, name, prov, pid, spec, h, fps, commit, run_id, at = row
    return AppliedRecord(
        env, kind, name, prov, pid, json.loads(spec), h, json.loads(fps), commit, run_id,
        datetime.fromisoformat(at),
    )  # fmt: skip


def _lock_info(row: tuple[Any, ...]) -> LockInfo:
    env, run_id, user, host, pid, at, machine = row
    return LockInfo(env, run_id, user, host, int(pid), datetime.fromisoformat(at), machine)


def _insert_run(db: sqlite3.Connection, run: RunRecord) -> None:
    db.execute(
        "INSERT INTO runs (id, environment, commit_sha, trigger, started_at, finished_at, "
        "outcome, pull_request, author, approvers, reverted_commits, reverted_runs, details, "
        "policy) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            run.id,
            run.environment,
            run.commit,
            run.trigger,
            run.started_at.isoformat(),
            run.finished_at.isoformat() if run.finished_at else None,
            run.outcome,
            run.pull_request,
            run.author,
            json.dumps(run.approvers),
            json.dumps(run.reverted_commits),
            json.dumps(run.reverted_runs),
            json.dumps(run.details, sort_keys=True),
            None if run.policy is None else json.dumps(run.policy, sort_keys=True),
        ),
    )


def _insert_change(
    db: sqlite3.Connection, run_id: str, seq: int, change: ChangeRecord, at: str
) -> None:
    env, kind, name = change.key
    db.execute(
        "INSERT INTO changes (run_id, seq, environment, kind, name, action, outcome, "
        "error, provider_id, before_hash, after_hash, at, diff) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (run_id, seq, env, kind, name, change.action, change.outcome, change.error,
         change.provider_id, change.before_hash, change.after_hash, at,
         json.dumps(change.diff, sort_keys=True)),
    )  # fmt: skip


def _insert_applied(db: sqlite3.Connection, r: AppliedRecord) -> None:
    db.execute(
        "INSERT OR REPLACE INTO applied VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (r.environment, r.kind, r.name, r.provider, r.provider_id,
         canonical_json(r.spec) if r.spec_json is None else r.spec_json, r.spec_hash,
         json.dumps(r.secret_fingerprints, sort_keys=True), r.commit, r.run_id,
         r.applied_at.isoformat()),
    )  # fmt: skip


class SQLiteState:
    """`sqlite:///relative/to/repo.db` or `sqlite:////absolute/path.db`."""

    def __init__(
        self,
        path: Path,
        *,
        env: Mapping[str, str],
        url: str | None = None,
        read_only: bool = False,
    ) -> None:
        self.url = url or f"sqlite:///{path}"
        self.path = path
        self.read_only = read_only
        self._env = dict(env)
        self._mu = threading.RLock()
        self._held = HeldLocks()
        #: Per environment, the held lock and the stored row last verified as its own.
        self._checked: dict[str, tuple[LockInfo, tuple[Any, ...]]] = {}
        #: The next change number of the run written last, so a change costs no MAX(seq)
        #: query (only the lock holder writes a run's changes, and `_check_held` says so).
        self._next_seq: dict[str, int] = {}
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
            self._migrate(db)
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
                version = self._readable_version(db)
            except BaseException:
                db.close()
                raise
            if version is not None:
                self._version = version
                return db
            db.close()
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._migrate(db)
        return db

    def _readable_version(self, db: sqlite3.Connection) -> int | None:
        """The schema a read-only store reads as is; None for a file with no tables yet."""
        version = self._check_version(db)
        if version >= READABLE_FROM:
            return version
        if not db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            return None
        raise StateError(
            f"state {self.url} has schema {version}, older than this reconciler reads "
            f"without migrating ({READABLE_FROM}); `reconciler apply` migrates it"
        )

    def _check_version(self, db: sqlite3.Connection) -> int:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state {self.url} has schema {version}, newer than this reconciler "
                f"understands ({SCHEMA_VERSION}): upgrade reconciler"
            )
        return int(version)

    def _migrate(self, db: sqlite3.Connection) -> None:
        if self._check_version(db) == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            version = self._check_version(db)  # another process may have migrated meanwhile
            for step in range(version, SCHEMA_VERSION):
                _MIGRATIONS[step](db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _tx(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE so two processes never interleave writes.
        Nothing of it stays when it raises."""
        if self.read_only:
            raise read_only_error(self.url, what)
        with self._mu:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StateError(f"cannot write state {self.url}: {e}") from None
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StateError(f"cannot {what} in state {self.url}: {e}") from None
                raise

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._mu:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StateError(f"cannot read state {self.url}: {e}") from None

    def _lock_row(self, db: sqlite3.Connection, environment: str) -> LockInfo | None:
        row = db.execute(self._lock_sql, (environment,)).fetchone()
        return _lock_info(row) if row else None

    def _check_held(self, db: sqlite3.Connection, environment: str) -> None:
        """Inside the write's transaction: a run holding the lock writes only while the
        stored lock is still its own (HeldLocks.check)."""
        mine = self._held.get(environment)
        if mine is None:
            return
        row = db.execute(self._lock_sql, (environment,)).fetchone()
        if row is not None and self._checked.get(environment) == (mine, row):
            return  # the very row this lock was last found as: still its own
        self._held.check(environment, _lock_info(row) if row else None)
        self._checked[environment] = (mine, row)

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
        self, environment: str, keys: Collection[InstanceKey] | None = None
    ) -> dict[InstanceKey, AppliedRecord]:
        if keys is None:
            rows = self._query(
                f"SELECT {_APPLIED_COLUMNS} FROM applied WHERE environment = ? ORDER BY kind, name",
                (environment,),
            )
            return {InstanceKey(*r[:3]): _applied_record(r) for r in rows}
        wanted = [k for k in dict.fromkeys(map(InstanceKey._make, keys)) if k[0] == environment]
        if len(wanted) == 1:  # the executor asks per change: one primary-key lookup
            rows = self._query(
                f"SELECT {_APPLIED_COLUMNS} FROM applied "
                "WHERE environment = ? AND kind = ? AND name = ?",
                tuple(wanted[0]),
            )
        else:
            rows = []
            for i in range(0, len(wanted), _KEYS_PER_QUERY):
                chunk = wanted[i : i + _KEYS_PER_QUERY]
                values = ",".join("(?,?)" for _ in chunk)
                rows += self._query(
                    f"WITH wanted (kind, name) AS (VALUES {values}) "
                    f"SELECT {_APPLIED_COLUMNS} FROM wanted CROSS JOIN applied USING (kind, name) "
                    "WHERE applied.environment = ?",
                    (*(x for k in chunk for x in (k.kind, k.name)), environment),
                )
        return {r.key: r for r in sorted(map(_applied_record, rows), key=lambda r: r.key)}

    def applied_index(self, environment: str) -> dict[InstanceKey, AppliedSummary]:
        rows = self._query(
            "SELECT kind, name, provider, spec_hash, secret_fingerprints FROM applied "
            "WHERE environment = ?",
            (environment,),
        )
        return index_from_rows(environment, rows)

    def runs(self, environment: str | None = None, limit: int | None = None) -> list[RunRecord]:
        sql = self._run_sql
        args: tuple[Any, ...] = ()
        if environment is not None:
            sql += " WHERE environment = ?"
            args = (environment,)
        sql += " ORDER BY started_at DESC, rowid DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._load_runs(self._query(sql, args))

    def run(self, run_id: str) -> RunRecord | None:
        runs = self._load_runs(self._query(f"{self._run_sql} WHERE id = ?", (run_id,)))
        return runs[0] if runs else None

    def runs_for_commit(self, commit: str) -> list[RunRecord]:
        rows = self._query(
            f"{self._run_sql} WHERE commit_sha = ? ORDER BY started_at DESC", (commit,)
        )
        return self._load_runs(rows)

    def last_applied_run(self, environment: str) -> RunRecord | None:
        rows = self._query(
            f"{self._run_sql} WHERE environment = ? AND outcome = 'applied' AND trigger <> 'heal' "
            "ORDER BY started_at DESC, rowid DESC LIMIT 1",
            (environment,),
        )
        return self._load_runs(rows, with_changes=False)[0] if rows else None

    def _load_runs(self, rows: list[Any], *, with_changes: bool = True) -> list[RunRecord]:
        if not rows:
            return []
        ids = [r[0] for r in rows]
        changes: dict[str, list[ChangeRecord]] = {i: [] for i in ids}
        marks = ",".join("?" * len(ids))
        found = (
            self._query(
                f"{self._change_sql} WHERE run_id IN ({marks}) ORDER BY run_id, seq", tuple(ids)
            )
            if with_changes
            else []
        )
        for row in found:
            run_id, env, kind, name, action, outcome, error, pid, bh, ah, at, diff = row
            changes[run_id].append(
                ChangeRecord(
                    InstanceKey(env, kind, name),
                    action,
                    outcome,
                    error,
                    pid,
                    bh,
                    ah,
                    _ts(at),
                    json.loads(diff),
                )
            )
        out = []
        for r in rows:
            (rid, env, commit, trigger, started, finished, outcome, pr, author, approvers,
             rcommits, rruns, details, policy) = r  # fmt: skip
            out.append(
                RunRecord(
                    id=rid,
                    environment=env,
                    commit=commit,
                    trigger=trigger,
                    started_at=datetime.fromisoformat(started),
                    finished_at=_ts(finished),
                    outcome=outcome,
                    pull_request=pr,
                    author=author,
                    approvers=json.loads(approvers),
                    reverted_commits=json.loads(rcommits),
                    reverted_runs=json.loads(rruns),
                    changes=changes[rid],
                    details=json.loads(details),
                    policy=json.loads(policy) if policy else None,
                )
            )
        return out

    # -- writes ----------------------------------------------------------------------

    def begin_run(self, run: RunRecord) -> None:
        with self._tx(f"begin run {run.id}") as db:
            self._check_held(db, run.environment)
            _insert_run(db, run)

    def record_change(
        self,
        run_id: str,
        change: ChangeRecord,
        applied: AppliedRecord | None,
        removed: InstanceKey | None,
    ) -> None:
        env = change.key.environment
        at = (change.at or _now()).isoformat()
        # The next number is kept only once this write is committed, under the same
        # lock (`_tx` takes it again), so no other write sees a number not yet in.
        with self._mu:
            with self._tx(f"record a change of run {run_id}") as db:
                self._check_held(db, env)
                seq = self._next_seq.pop(run_id, None)
                if seq is None:
                    (seq,) = db.execute(
                        "SELECT COALESCE(MAX(seq), 0) + 1 FROM changes WHERE run_id = ?", (run_id,)
                    ).fetchone()
                    if (
                        seq == 1
                        and db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone()
                        is None
                    ):
                        raise StateError(f"state {self.url}: no run {run_id} (begin_run first)")
                _insert_change(db, run_id, seq, change, at)
                if removed is not None:
                    db.execute(
                        "DELETE FROM applied WHERE environment = ? AND kind = ? AND name = ?",
                        tuple(removed),
                    )
                if applied is not None:
                    _insert_applied(db, applied)
                if applied is not None or removed is not None:
                    db.execute(
                        "INSERT INTO serials VALUES (?, 1) "
                        "ON CONFLICT (environment) DO UPDATE SET serial = serial + 1",
                        (env,),
                    )
            self._next_seq = {run_id: seq + 1}  # a run's changes are written by its holder

    def finish_run(self, run_id: str, outcome: str, details: dict[str, Any] | None = None) -> None:
        with self._tx(f"finish run {run_id}") as db:
            row = db.execute("SELECT environment FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise StateError(f"state {self.url}: no run {run_id} (begin_run first)")
            self._check_held(db, row[0])
            if details is None:
                db.execute(
                    "UPDATE runs SET outcome = ?, finished_at = ? WHERE id = ?",
                    (outcome, _now().isoformat(), run_id),
                )
            else:
                db.execute(
                    "UPDATE runs SET outcome = ?, finished_at = ?, details = ? WHERE id = ?",
                    (outcome, _now().isoformat(), json.dumps(details, sort_keys=True), run_id),
                )

    def import_environment(self, state: EnvironmentState) -> None:
        env = state.environment
        with self._tx(f"import environment {env!r}") as db:
            taken = db.execute(
                "SELECT 1 FROM runs WHERE environment = :e UNION ALL "
                "SELECT 1 FROM applied WHERE environment = :e UNION ALL "
                "SELECT 1 FROM serials WHERE environment = :e LIMIT 1",
                {"e": env},
            ).fetchone()
            if taken is not None:
                raise already_has_state(self.url, env)
            for run in state.runs:
                _insert_run(db, run)
                for seq, change in enumerate(run.changes, 1):
                    _insert_change(
                        db, run.id, seq, change, (change.at or run.started_at).isoformat()
                    )
            for record in state.applied:
                _insert_applied(db, record)
            if state.serial:
                db.execute("INSERT INTO serials VALUES (?, ?)", (env, state.serial))

    # -- locks -----------------------------------------------------------------------

    def lock_holder(self, environment: str) -> LockInfo | None:
        with self._mu:
            try:
                return self._lock_row(self._db, environment)
            except sqlite3.Error as e:
                raise StateError(f"cannot read state {self.url}: {e}") from None

    @contextmanager
    def lock(
        self, environment: str, run_id: str, *, break_lock: bool = False
    ) -> Iterator[LockInfo]:
        me = this_process(environment, run_id)
        with self._tx(f"lock {environment!r}") as db:
            holder = self._lock_row(db, environment)
            if holder is not None and check_takeover(holder, me, break_lock=break_lock):
                db.execute(
                    "UPDATE runs SET outcome = 'interrupted', finished_at = ? "
                    "WHERE id = ? AND outcome = 'running'",
                    (me.acquired_at.isoformat(), holder.run_id),
                )
                db.execute("DELETE FROM locks WHERE environment = ?", (environment,))
            db.execute(
                "INSERT INTO locks (environment, run_id, user, host, pid, acquired_at, machine) "
                "VALUES (?,?,?,?,?,?,?)",
                (environment, run_id, me.user, me.host, me.pid, me.acquired_at.isoformat(),
                 me.machine),
            )  # fmt: skip
        with holding(self._held, me, self._unlock):
            yield me

    def check_lock(self, environment: str) -> None:
        """One read of the lock row: another process's --break-lock replaced it."""
        if environment not in self._held:
            return
        with self._mu:
            try:
                self._check_held(self._db, environment)
            except sqlite3.Error as e:
                raise StateError(f"cannot read state {self.url}: {e}") from None

    def _unlock(self, me: LockInfo) -> None:
        with self._tx(f"unlock {me.environment!r}") as db:
            if me.same_holder(self._lock_row(db, me.environment)):
                db.execute("DELETE FROM locks WHERE environment = ?", (me.environment,))

    # -- keys ------------------------------------------------------------------------

    def fingerprint_key(self, *, create: bool = True) -> bytes | None:
        """RECONCILER_FINGERPRINT_KEY of the injected environment when set (keeps the key
        out of the state), else a random key made once per state."""
        if create and self.read_only:
            raise read_only_error(self.url, "create the fingerprint key")
        env_key = fingerprint_key_from_env(self._env)
        if env_key:
            return env_key
        rows = self._query("SELECT value FROM meta WHERE key = 'fingerprint_key'")
        if rows:
            return bytes.fromhex(rows[0][0])
        if not create:
            return None
        with self._tx("create the fingerprint key") as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'fingerprint_key'").fetchone()
            if row is None:
                value = secrets.token_hex(32)
                db.execute("INSERT INTO meta VALUES ('fingerprint_key', ?)", (value,))
            else:
                value = row[0]
        return bytes.fromhex(value)

    def import_fingerprint_key(self, key: bytes) -> None:
        with self._tx("import the fingerprint key") as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'fingerprint_key'").fetchone()
            used = db.execute("SELECT 1 FROM applied LIMIT 1").fetchone()
            if row is not None and row[0] != key.hex() and used:
                raise other_key_error(self.url)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('fingerprint_key', ?)", (key.hex(),))

    def close(self) -> None:
        with self._mu:
            self._db.close()
