"""Agents sharing a `postgresql://` state: who is alive, who works which keys, who
holds a singleton duty, and whether session locks hold at all on this connection.

PostgreSQL stays the only coordination engine. Each agent is a row of
`reconciler_members`, beaten on a session of its own; a member is alive while its row
was beaten within the time-to-live *and* the session that wrote it still exists (so a
`kill -9`, whose session the server ends at once, is noticed at the survivors' next
beat, not after the time-to-live). Work keys go to members by rendezvous hashing: each
key to the live member with the highest hash of (member, key), so a member joining or
leaving moves only the keys it wins or held. Assignment only spreads the work: the
environment's advisory lock stays the mutex, so a key briefly claimed by two members
(one has not seen the other join yet) is still applied by one at a time.

A singleton duty (something exactly one agent should do: pruning dead members here,
firing schedules later) is a session advisory lock on the member's session: the
holder keeps it while its session lives; the others are standbys that try again at
every beat and take it within one beat of the holder's session ending.

The members table is not part of the versioned state schema: it holds only who is
running now, is created on first use, and is never migrated or exported.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from reconciler.errors import ConfigError, StateError
from reconciler.log import redact
from reconciler.state.urls import mask_url

_CREATE = """CREATE TABLE IF NOT EXISTS reconciler_members (
    member text COLLATE "C" PRIMARY KEY, host text NOT NULL, pid integer NOT NULL,
    backend_pid integer NOT NULL, backend_start timestamptz NOT NULL,
    started_at timestamptz NOT NULL, heartbeat_at timestamptz NOT NULL)"""
_LIVE = """SELECT m.member FROM reconciler_members m
    JOIN pg_stat_activity a ON a.pid = m.backend_pid AND a.backend_start = m.backend_start
    WHERE m.heartbeat_at > now() - make_interval(secs => %s) ORDER BY m.member"""
#: Seconds a session may take to connect before the state counts as unreachable.
CONNECT_TIMEOUT_S = 5


def _key(namespace: str, what: str) -> int:
    """A 63-bit advisory lock key, as the state's own (reconciler.state.postgres)."""
    digest = hashlib.sha256(f"reconciler\0{namespace}\0{what}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def conninfo(url: str, *, connect_timeout: int = CONNECT_TIMEOUT_S) -> str:
    try:
        params: dict[str, Any] = conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise ConfigError(f"state URL {mask_url(url)!r} is not valid: {redact(str(e))}") from None
    params["connect_timeout"] = min(int(params.get("connect_timeout") or connect_timeout), 10)
    params.setdefault("application_name", "reconciler-agent")
    return make_conninfo(**params)


def _error(url: str, what: str, e: BaseException) -> StateError:
    text = redact(str(e).strip()) or type(e).__name__
    first, _, rest = text.partition("\n")
    return StateError(f"cannot {what} ({mask_url(url)}): {first}", details=rest or None)


def rendezvous(key: str, members: Sequence[str]) -> str | None:
    """The member that works `key`: the highest hash of (member, key)."""
    if not members:
        return None
    return max(members, key=lambda m: hashlib.sha256(f"{m}\0{key}".encode()).digest())


def ping(url: str, *, timeout: int = CONNECT_TIMEOUT_S) -> None:
    """Connect and ask one trivial question; StateError when the server does not answer."""
    try:
        with psycopg.connect(conninfo(url, connect_timeout=timeout), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        raise _error(url, "reach the state", e) from None


def check_session_locks(url: str, *, wait: float = 5.0) -> None:
    """Refuse a connection on which session advisory locks do not stick to one session
    (PgBouncer, or another proxy, pooling by transaction): there, a lock taken by one
    statement may sit on a server session another client then uses, and two agents
    could apply one environment at once.

    Three observations, each of which a transaction-pooling proxy fails sooner or later
    and a real session never does: (1) a second client cannot take the lock the first
    holds; (2) while the second client keeps a transaction open (pinning the server
    session the proxy would hand out next), the first still runs on the session it took
    the lock on; (3) and without waiting for the second to finish: a proxy with a single
    server session makes the first wait until the second's transaction ends.
    """
    info = conninfo(url)
    key = _key("check", uuid.uuid4().hex)
    try:
        first = psycopg.connect(info, autocommit=True)
    except psycopg.Error as e:
        raise _error(url, "open the state", e) from None
    try:
        row = first.execute("SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (key,)).fetchone()
        assert row is not None
        if not row[0]:
            raise StateError(f"cannot check session locks on {mask_url(url)}: key in use")
        pid = int(row[1])
        second = psycopg.connect(info, autocommit=False)
        try:
            took = second.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if took and took[0]:
                _refuse(url, "a second connection took the session lock the first one held")
            found: list[Any] = []
            failed: list[BaseException] = []

            def look() -> None:
                try:
                    found.append(
                        first.execute(
                            "SELECT pg_backend_pid(), EXISTS (SELECT 1 FROM pg_locks WHERE "
                            "locktype = 'advisory' AND granted AND pid = pg_backend_pid() "
                            "AND classid::bigint = (%s::bigint >> 32) "
                            "AND objid::bigint = (%s::bigint & 4294967295) AND objsubid = 1)",
                            (key, key),
                        ).fetchone()
                    )
                except BaseException as e:  # reported below, on the caller's thread
                    failed.append(e)

            looker = threading.Thread(target=look, name="session-lock-check", daemon=True)
            looker.start()
            looker.join(wait)
            answered = not looker.is_alive()
            second.rollback()
            looker.join(wait)
            if failed:
                raise failed[0]
            if not answered:
                _refuse(url, "a connection waited for another's transaction to end")
            again = found[0] if found else None
            if again is None or int(again[0]) != pid or not again[1]:
                _refuse(url, "the session lock was not on the connection's next statement")
        finally:
            second.close()
    except psycopg.OperationalError as e:
        if "pooling mode" in str(e):  # PgBouncer's statement pooling says so
            _refuse(url, redact(str(e).strip().partition("\n")[0]))
        raise _error(url, "check session locks on the state", e) from None
    except psycopg.Error as e:  # e.g. "transaction blocks not allowed in statement pooling"
        _refuse(url, redact(str(e).strip().partition("\n")[0]))
    finally:
        with suppress(psycopg.Error):
            first.execute("SELECT pg_advisory_unlock_all()")
        first.close()


def _refuse(url: str, why: str) -> None:
    raise ConfigError(
        f"state {mask_url(url)}: session advisory locks do not hold on this connection "
        f"({why}): a proxy pooling by transaction (PgBouncer's pool_mode=transaction) sits "
        "in between, and environment locks would not be exclusive. Connect to PostgreSQL "
        "directly or through a session-pooling proxy (pool_mode=session)"
    )


def member_name() -> str:
    """Host, process and a random part: unique even when pids repeat across containers."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Membership:
    """This agent's row among the members, beaten on a session of its own."""

    def __init__(self, url: str, *, name: str | None = None, ttl: float = 30.0) -> None:
        self.url = url
        self.name = name or member_name()
        self.ttl = ttl
        self._info = conninfo(url)
        self._conn: psycopg.Connection[Any] | None = None
        self._namespace = ""
        self._mu = threading.Lock()
        #: Duties whose lock this member's session holds.
        self._held: set[str] = set()

    def _session(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._held.clear()  # a new session holds nothing yet
        conn = psycopg.connect(self._info, autocommit=True)
        row = conn.execute("SELECT current_schema()").fetchone()
        if row is None or row[0] is None:
            conn.close()
            raise StateError(f"state {mask_url(self.url)}: the search_path names no schema")
        self._namespace = str(row[0])
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_key(self._namespace, "members"),))
            conn.execute(_CREATE)
        conn.execute(
            "INSERT INTO reconciler_members SELECT %s, %s, %s, pg_backend_pid(), "
            "backend_start, now(), now() FROM pg_stat_activity WHERE pid = pg_backend_pid() "
            "ON CONFLICT (member) DO UPDATE SET backend_pid = EXCLUDED.backend_pid, "
            "backend_start = EXCLUDED.backend_start, heartbeat_at = now()",
            (self.name, socket.gethostname(), os.getpid()),
        )
        self._conn = conn
        return conn

    def beat(self) -> list[str]:
        """Beat this member's row; the live members (this one included), sorted."""
        with self._mu:
            try:
                conn = self._session()
                conn.execute(
                    "UPDATE reconciler_members SET heartbeat_at = now() WHERE member = %s",
                    (self.name,),
                )
                rows = conn.execute(_LIVE, (self.ttl,)).fetchall()
            except psycopg.Error as e:
                self._drop()
                raise _error(self.url, "beat this agent's membership", e) from None
            return [str(r[0]) for r in rows]

    def hold(self, duty: str) -> bool:
        """True while this member holds `duty` (taken now when it is free)."""
        with self._mu:
            if duty in self._held:
                return True
            try:
                conn = self._session()
                row = conn.execute(
                    "SELECT pg_try_advisory_lock(%s)", (_key(self._namespace, f"duty\0{duty}"),)
                ).fetchone()
            except psycopg.Error as e:
                self._drop()
                raise _error(self.url, f"take the duty {duty!r}", e) from None
            if row and row[0]:
                self._held.add(duty)
                return True
            return False

    def prune(self, older_than: float) -> int:
        """Forget members whose session ended or that missed beats for `older_than` s."""
        with self._mu:
            try:
                cur = self._session().execute(
                    "DELETE FROM reconciler_members m WHERE m.heartbeat_at < now() - "
                    "make_interval(secs => %s) OR NOT EXISTS (SELECT 1 FROM pg_stat_activity "
                    "a WHERE a.pid = m.backend_pid AND a.backend_start = m.backend_start)",
                    (older_than,),
                )
            except psycopg.Error as e:
                self._drop()
                raise _error(self.url, "prune the members", e) from None
            return cur.rowcount

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()

    def leave(self) -> None:
        """Remove this member's row and end its session (and the duties it held)."""
        with self._mu:
            conn = self._conn
            if conn is not None and not conn.closed:
                with suppress(psycopg.Error):
                    conn.execute("DELETE FROM reconciler_members WHERE member = %s", (self.name,))
            self._drop()


def owned(keys: Mapping[str, str], me: str, members: Iterable[str]) -> set[str]:
    """Of `keys` (item → work key), the items whose work key rendezvous gives to `me`."""
    live = sorted(set(members))
    return {item for item, key in keys.items() if rendezvous(key, live) == me}
