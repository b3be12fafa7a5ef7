"""The embedded default state backend: one SQLite file, WAL, one transaction per change.

Locks live in the same file, so they work across processes on one machine; a lock whose
process is gone (same host, pid dead, e.g. after kill -9) is taken over automatically
and the run it belonged to is marked `interrupted`.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.errors import LockedError, StateError
from reconciler.instances import InstanceKey
from reconciler.state.base import (
    SCHEMA_VERSION,
    AppliedRecord,
    AppliedSummary,
    ChangeRecord,
    LockInfo,
    RunRecord,
)

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


def _run_script(script: str) -> Callable[[sqlite3.Connection], None]:
    """Statement by statement: `executescript` would commit the migration's transaction."""

    def run(db: sqlite3.Connection) -> None:
        for statement in filter(str.strip, script.split(";")):
            db.execute(statement)

    return run


#: _MIGRATIONS[n] takes a database at schema n to n + 1, inside one transaction.
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_run_script(_SCHEMA_V1)]
assert len(_MIGRATIONS) == SCHEMA_VERSION


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class SQLiteState:
    """`sqlite:///relative/to/repo.db` or `sqlite:////absolute/path.db`."""

    def __init__(self, path: Path, *, url: str | None = None) -> None:
        self.url = url or f"sqlite:///{path}"
        self.path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as e:
            raise StateError(f"cannot open state {self.url}: {e}") from None
        except OSError as e:
            raise StateError(f"cannot open state {self.url}: {e.strerror}") from None

    # -- plumbing --------------------------------------------------------------------

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state {self.url} has schema {version}, newer than this reconciler "
                f"understands ({SCHEMA_VERSION}): upgrade reconciler"
            )
        if version == SCHEMA_VERSION:
            return
        with self._tx():
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            for step in range(version, SCHEMA_VERSION):
                _MIGRATIONS[step](self._db)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE so two processes never interleave writes."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StateError(f"cannot write state {self.url}: {e}") from None
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StateError(f"cannot read state {self.url}: {e}") from None

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
        sql = (
            "SELECT environment, kind, name, provider, provider_id, spec, spec_hash, "
            "secret_fingerprints, commit_sha, run_id, applied_at FROM applied "
            "WHERE environment = ? ORDER BY kind, name"
        )
        wanted = None if keys is None else set(keys)
        if wanted is not None and len(wanted) < 400:  # SQLite allows 999 parameters
            if not wanted:
                return {}
            marks = " OR ".join("(kind = ? AND name = ?)" for _ in wanted)
            sql = sql.replace("ORDER BY", f"AND ({marks}) ORDER BY")
            args: tuple[Any, ...] = (environment, *(x for _, k, n in wanted for x in (k, n)))
        else:
            args = (environment,)
        out: dict[InstanceKey, AppliedRecord] = {}
        for env, kind, name, prov, pid, spec, h, fps, commit, run_id, at in self._query(sql, args):
            if wanted is not None and (env, kind, name) not in wanted:
                continue
            out[InstanceKey(env, kind, name)] = AppliedRecord(
                env, kind, name, prov, pid, json.loads(spec), h, json.loads(fps), commit,
                run_id, datetime.fromisoformat(at),
            )  # fmt: skip
        return out

    def applied_index(self, environment: str) -> dict[InstanceKey, AppliedSummary]:
        rows = self._query(
            "SELECT kind, name, provider, spec_hash, secret_fingerprints FROM applied "
            "WHERE environment = ?",
            (environment,),
        )
        decoded: dict[str, dict[str, str | None]] = {}  # most rows share one secret set
        out = {}
        for kind, name, prov, h, fps in rows:
            if fps not in decoded:
                decoded[fps] = json.loads(fps)
            out[InstanceKey(environment, kind, name)] = AppliedSummary(prov, h, dict(decoded[fps]))
        return out

    def runs(self, environment: str | None = None, limit: int | None = None) -> list[RunRecord]:
        sql = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if environment is not None:
            sql += " WHERE environment = ?"
            args = (environment,)
        sql += " ORDER BY started_at DESC, rowid DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._load_runs(self._query(sql, args))

    def run(self, run_id: str) -> RunRecord | None:
        runs = self._load_runs(self._query("SELECT * FROM runs WHERE id = ?", (run_id,)))
        return runs[0] if runs else None

    def runs_for_commit(self, commit: str) -> list[RunRecord]:
        rows = self._query(
            "SELECT * FROM runs WHERE commit_sha = ? ORDER BY started_at DESC", (commit,)
        )
        return self._load_runs(rows)

    def _load_runs(self, rows: list[Any]) -> list[RunRecord]:
        if not rows:
            return []
        ids = [r[0] for r in rows]
        changes: dict[str, list[ChangeRecord]] = {i: [] for i in ids}
        marks = ",".join("?" * len(ids))
        for row in self._query(
            "SELECT run_id, environment, kind, name, action, outcome, error, provider_id, "
            f"before_hash, after_hash, at FROM changes WHERE run_id IN ({marks}) "
            "ORDER BY run_id, seq",
            tuple(ids),
        ):
            run_id, env, kind, name, action, outcome, error, pid, bh, ah, at = row
            changes[run_id].append(
                ChangeRecord(
                    InstanceKey(env, kind, name), action, outcome, error, pid, bh, ah, _ts(at)
                )
            )
        out = []
        for r in rows:
            (rid, env, commit, trigger, started, finished, outcome, pr, author, approvers,
             rcommits, rruns, details) = r  # fmt: skip
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
                )
            )
        return out

    # -- writes ----------------------------------------------------------------------

    def begin_run(self, run: RunRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                ),
            )

    def record_change(
        self,
        run_id: str,
        change: ChangeRecord,
        applied: AppliedRecord | None,
        removed: InstanceKey | None,
    ) -> None:
        env, kind, name = change.key
        at = (change.at or _now()).isoformat()
        with self._tx() as db:
            (seq,) = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM changes WHERE run_id = ?", (run_id,)
            ).fetchone()
            db.execute(
                "INSERT INTO changes VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, seq, env, kind, name, change.action, change.outcome, change.error,
                 change.provider_id, change.before_hash, change.after_hash, at),
            )  # fmt: skip
            if removed is not None:
                db.execute(
                    "DELETE FROM applied WHERE environment = ? AND kind = ? AND name = ?",
                    removed,
                )
            if applied is not None:
                db.execute(
                    "INSERT OR REPLACE INTO applied VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (applied.environment, applied.kind, applied.name, applied.provider,
                     applied.provider_id, json.dumps(applied.spec, sort_keys=True),
                     applied.spec_hash, json.dumps(applied.secret_fingerprints, sort_keys=True),
                     applied.commit, applied.run_id, applied.applied_at.isoformat()),
                )  # fmt: skip
            if applied is not None or removed is not None:
                db.execute(
                    "INSERT INTO serials VALUES (?, 1) "
                    "ON CONFLICT (environment) DO UPDATE SET serial = serial + 1",
                    (env,),
                )

    def finish_run(self, run_id: str, outcome: str, details: dict[str, Any] | None = None) -> None:
        with self._tx() as db:
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

    # -- locks -----------------------------------------------------------------------

    def lock_holder(self, environment: str) -> LockInfo | None:
        rows = self._query(
            "SELECT environment, run_id, user, host, pid, acquired_at FROM locks "
            "WHERE environment = ?",
            (environment,),
        )
        if not rows:
            return None
        env, run_id, user, host, pid, at = rows[0]
        return LockInfo(env, run_id, user, host, int(pid), datetime.fromisoformat(at))

    @contextmanager
    def lock(
        self, environment: str, run_id: str, *, break_lock: bool = False
    ) -> Iterator[LockInfo]:
        me = LockInfo(environment, run_id, _user(), socket.gethostname(), os.getpid(), _now())
        with self._tx() as db:
            holder = self.lock_holder(environment)
            if holder is not None:
                stale = holder.host == me.host and not _pid_alive(holder.pid)
                if not (stale or break_lock):
                    raise LockedError(
                        f"environment {environment!r} is locked by {holder.describe()}; "
                        "if that run crashed on another machine, re-run with --break-lock"
                    )
                db.execute(
                    "UPDATE runs SET outcome = 'interrupted', finished_at = ? "
                    "WHERE id = ? AND outcome = 'running'",
                    (me.acquired_at.isoformat(), holder.run_id),
                )
                db.execute("DELETE FROM locks WHERE environment = ?", (environment,))
            db.execute(
                "INSERT INTO locks VALUES (?,?,?,?,?,?)",
                (environment, run_id, me.user, me.host, me.pid, me.acquired_at.isoformat()),
            )
        try:
            yield me
        finally:
            with self._tx() as db:
                db.execute(
                    "DELETE FROM locks WHERE environment = ? AND run_id = ?",
                    (environment, run_id),
                )

    # -- keys ------------------------------------------------------------------------

    def fingerprint_key(self, *, create: bool = True) -> bytes | None:
        """RECONCILER_FINGERPRINT_KEY when set (keeps the key out of the state), else a
        random key made once per state."""
        env_key = os.environ.get("RECONCILER_FINGERPRINT_KEY")
        if env_key:
            return env_key.encode()
        rows = self._query("SELECT value FROM meta WHERE key = 'fingerprint_key'")
        if rows:
            return bytes.fromhex(rows[0][0])
        if not create:
            return None
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'fingerprint_key'").fetchone()
            if row is None:
                value = secrets.token_hex(32)
                db.execute("INSERT INTO meta VALUES ('fingerprint_key', ?)", (value,))
            else:
                value = row[0]
        return bytes.fromhex(value)

    def close(self) -> None:
        with self._lock:
            self._db.close()
