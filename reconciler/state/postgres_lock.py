"""The locks of a `postgresql://` state: each a session-level advisory lock on a
connection of its own, with a row in `reconciler_locks` saying who holds it (see
postgres.py). A lock dies with its session; `check_lock` is one query on that session."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo

from reconciler.errors import LockedError
from reconciler.log import redact
from reconciler.state.backend import LockLost, Tx
from reconciler.state.base import LockInfo, check_takeover

if TYPE_CHECKING:
    from reconciler.state.postgres import PostgresBackend

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


def lock_session_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The connection parameters of a lock's session: the store's, with TCP keepalives
    from both ends (the URL's own keepalive values win)."""
    options = " ".join(o for o in (params.get("options") or "", _LOCK_SESSION_OPTIONS) if o)
    return {**LOCK_SESSION_KEEPALIVES, **params, "options": options}


class LockSessions:
    """The session holding each lock a PostgresBackend took, by environment."""

    def __init__(self, backend: PostgresBackend) -> None:
        self._b = backend
        self._mu = threading.Lock()
        self._sessions: dict[str, psycopg.Connection[Any]] = {}

    def lock(
        self, me: LockInfo, *, break_lock: bool, taken_over: Callable[[Tx, LockInfo], None]
    ) -> None:
        what = f"lock {me.environment!r}"
        try:
            params = lock_session_params(self._b.params)
            session = psycopg.connect(make_conninfo(**params), autocommit=True)
        except psycopg.Error as e:
            raise self._b.error(what, e) from None
        try:
            self._acquire(session, me, break_lock=break_lock, taken_over=taken_over)
        except psycopg.Error as e:
            session.close()
            raise self._b.error(what, e) from None
        except BaseException:
            session.close()
            raise
        with self._mu:
            self._sessions[me.environment] = session

    def _acquire(
        self,
        session: psycopg.Connection[Any],
        me: LockInfo,
        *,
        break_lock: bool,
        taken_over: Callable[[Tx, LockInfo], None],
    ) -> None:
        """Under a transaction-level advisory lock per environment, so the session lock
        and the row always change together."""
        env = me.environment
        key = self._b.key(f"lock\0{env}")
        with session.transaction():
            session.execute("SELECT pg_advisory_xact_lock(%s)", (self._b.key(f"guard\0{env}"),))
            row = session.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            holder = self._b.lock_row(session, env)
            if not (row and row[0]):
                self._wait_for_holder(session, key, holder, me, break_lock=break_lock)
            if holder is not None:  # its session is gone: take over
                session.execute("DELETE FROM reconciler_locks WHERE environment = %s", (env,))
                taken_over(self._b.tx(session), holder)
            session.execute(
                "INSERT INTO reconciler_locks (environment, run_id, holder_user, host, pid, "
                "acquired_at, machine) VALUES (%s,%s,%s,%s,%s,%s,%s)",
                (env, me.run_id, me.user, me.host, me.pid, me.acquired_at, me.machine),
            )

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
        if break_lock:  # end the sessions holding `key`: its holder's next write fails
            session.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND objsubid = 1 AND classid = %s::bigint::oid "
                "AND objid = %s::bigint::oid AND pid <> pg_backend_pid() "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (key >> 32, key & 0xFFFFFFFF),
            )
        session.execute(f"SET LOCAL lock_timeout = '{SESSION_END_TIMEOUT_S}s'")
        try:
            session.execute("SELECT pg_advisory_lock(%s)", (key,))
        except pg_errors.LockNotAvailable:
            raise LockedError(
                f"environment {env!r} is locked by {who}, whose PostgreSQL session did not "
                f"end within {SESSION_END_TIMEOUT_S} s"
            ) from None

    def check(self, me: LockInfo) -> LockInfo:
        """One round trip on the lock's own session: it is alive and still holds the
        advisory lock (while it does, nobody can have taken the lock over, so the row is
        still this run's). A session ended by the server, a pooler's idle timeout, a lost
        connection or another run's --break-lock fails it (LockLost)."""
        with self._mu:
            session = self._sessions.get(me.environment)
        key = self._b.key(f"lock\0{me.environment}")
        why = "its PostgreSQL session ended: the connection is closed"
        if session is not None and not session.closed:
            try:
                row = session.execute(_HOLDS_LOCK, (key >> 32, key & 0xFFFFFFFF)).fetchone()
            except psycopg.Error as e:
                text = redact(str(e).strip()).partition("\n")[0] or type(e).__name__
                why = f"its PostgreSQL session ended: {text}"
            else:
                if row is not None and row[0]:
                    return me
                why = "its PostgreSQL session no longer holds the advisory lock"
        raise LockLost(why)

    def unlock(self, me: LockInfo) -> None:
        """Remove the row if still `me`'s and end the session (and with it the advisory
        lock). A session ended by another's --break-lock took its lock with it."""
        env = me.environment
        with self._mu:
            session = self._sessions.pop(env, None)
        guard = self._b.key(f"guard\0{env}")

        def release(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (guard,))
            if me.same_holder(self._b.lock_row(conn, env)):
                conn.execute("DELETE FROM reconciler_locks WHERE environment = %s", (env,))

        try:
            if session is not None and not session.closed:
                with suppress(psycopg.OperationalError), session.transaction():
                    release(session)
                    return
            with self._b.connection(f"unlock {env!r}") as conn, conn.transaction():
                release(conn)
        except psycopg.Error as e:
            raise self._b.error(f"unlock {env!r}", e) from None
        finally:
            if session is not None:
                session.close()

    def close(self) -> None:
        with self._mu:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()
