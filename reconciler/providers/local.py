"""The embedded default provider: a registry in a SQLite file under `.reconciler/`.

Where the file lives is the operator's choice, never a manifest's (a change under
review could otherwise create or migrate a SQLite file anywhere the runner can
write): `<repo>/.reconciler/local-registry.db`, or the absolute path in
RECONCILER_LOCAL_REGISTRY (`--local-registry` sets it). `config.path` is refused.

It needs no account and keeps secret *references* (`{"secretEnv": NAME}`), never
values, so the file is safe to leave on disk. Objects are keyed by (environment,
kind, name); concurrent threads share one connection behind a lock, and other
processes are kept out by SQLite's own locking (WAL, busy timeout). Every write is one
statement, so it is its own transaction: atomic, with no BEGIN/COMMIT round trips.
A body is stored as the instance's canonical JSON, the text its hash is of (encoded once).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from reconciler.errors import ProviderError
from reconciler.instances import Instance, ProviderConfig
from reconciler.providers.base import (
    HealthStatus,
    Invocation,
    InvokeTarget,
    LiveObject,
    Problem,
    Provider,
    Usage,
)
from reconciler.providers.invoke import render
from reconciler.redaction import Register, to_backstop

DEFAULT_PATH = ".reconciler/local-registry.db"
#: The environment variable naming the registry file (an absolute path).
REGISTRY_ENV = "RECONCILER_LOCAL_REGISTRY"
SCHEMA_VERSION = 1
_BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id          TEXT PRIMARY KEY,
    environment TEXT NOT NULL,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (environment, kind, name)
)
"""


#: Create, or adopt the object of the same key (its id stays, its body becomes ours).
#: `updated_at` moves only when the body changes; RETURNING gives the id either way.
_UPSERT = """
INSERT INTO objects (id, environment, kind, name, body, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (environment, kind, name) DO UPDATE SET
    body = excluded.body,
    updated_at = CASE WHEN body = excluded.body THEN updated_at ELSE excluded.updated_at END
RETURNING id
"""


def registry_problem(value: str | None) -> str | None:
    """What is wrong with a RECONCILER_LOCAL_REGISTRY value, if anything."""
    if value and not Path(value).is_absolute():
        return (
            f"{REGISTRY_ENV} must be an absolute path (it is {value!r}): the local "
            "registry is never placed relative to wherever reconciler happens to run"
        )
    return None


def registry_path(repo_root: Path, env: Mapping[str, str]) -> Path:
    """The registry file: RECONCILER_LOCAL_REGISTRY, else `<repo>/.reconciler/...`."""
    value = env.get(REGISTRY_ENV)
    return Path(value) if value else repo_root / DEFAULT_PATH


def _new_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so new ids go to the end of the primary-key
    index instead of a random page of it (100,000 random ids cost ~20% more per write)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 64 & 0xFFF) << 64
        | 0b10 << 62
        | rand & (1 << 62) - 1
    )
    return str(uuid.UUID(int=value))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class LocalProvider(Provider):
    """Deployments and schedules recorded in `<repo>/.reconciler/local-registry.db`
    (or at RECONCILER_LOCAL_REGISTRY)."""

    type_name: ClassVar[str] = "local"
    immutable_fields: ClassVar[frozenset[str]] = frozenset({"scaling.hardware"})
    #: Every write goes to one SQLite file under one lock: threads would only wait.
    max_concurrency: ClassVar[int | None] = 1

    def __init__(
        self,
        config: ProviderConfig,
        *,
        repo_root: Path,
        env: Mapping[str, str],
        register: Register = to_backstop,
    ) -> None:
        super().__init__(config, repo_root=repo_root, env=env, register=register)
        self.path = registry_path(repo_root, env)
        self._path_problem = registry_problem(env.get(REGISTRY_ENV))
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None

    # -- plumbing --------------------------------------------------------------------

    def _fail(self, what: str, e: BaseException) -> ProviderError:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return ProviderError(f"provider {self.name!r} ({self.path}): cannot {what}: {reason}")

    def _connect(self) -> sqlite3.Connection:
        """Open lazily, so making the provider (e.g. at plan time) touches no disk."""
        if self._db is not None:
            return self._db
        if self._path_problem:
            raise ProviderError(f"provider {self.name!r}: {self._path_problem}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S
            )
        except (sqlite3.Error, OSError) as e:
            raise self._fail("open the registry", e) from None
        try:
            db.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                (version,) = db.execute("PRAGMA user_version").fetchone()
                if version > SCHEMA_VERSION:
                    raise ProviderError(
                        f"provider {self.name!r} ({self.path}): registry schema {version} is "
                        f"newer than this reconciler understands ({SCHEMA_VERSION}): upgrade"
                    )
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as e:
            db.close()
            raise self._fail("open the registry", e) from None
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    def _write(self, what: str, sql: str, args: tuple[Any, ...]) -> tuple[list[Any], int]:
        """(rows returned, rows changed) of one statement, which SQLite runs as its own
        transaction: each write is a single statement, atomic without BEGIN/COMMIT.
        The rows are fetched under the lock: the transaction ends with the statement."""
        with self._lock:
            db = self._connect()
            try:
                cur = db.execute(sql, args)
                return cur.fetchall(), cur.rowcount
            except sqlite3.Error as e:
                raise self._fail(what, e) from None

    @staticmethod
    def _find(db: sqlite3.Connection, environment: str, kind: str, name: str) -> Any:
        return db.execute(
            "SELECT id, body FROM objects WHERE environment = ? AND kind = ? AND name = ?",
            (environment, kind, name),
        ).fetchone()

    # -- the contract ------------------------------------------------------------------

    def validate(self, inst: Instance) -> list[str | Problem]:
        problems: list[str | Problem] = []
        for key in sorted(self.config.config):
            if key == "path":
                message = (
                    "config.path is not taken: a manifest never chooses where the local "
                    f"registry is written; it lives at <repo>/{DEFAULT_PATH}, or set "
                    f"{REGISTRY_ENV}=/abs/path (or --local-registry PATH) where reconciler runs"
                )
            else:
                message = f"unknown config key {key!r} (the local provider takes none)"
            problems.append(
                Problem(f"provider {self.name!r}: {message}", ("config", key), "provider")
            )
        return problems

    def read(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> LiveObject | None:
        with self._lock:
            db = self._connect()
            try:
                row = self._find(db, environment, kind, name)
            except sqlite3.Error as e:
                raise self._fail(f"read {kind.lower()}.{name}", e) from None
        if row is None:
            return None
        return LiveObject(provider_id=row[0], body=json.loads(row[1]))

    def create(self, inst: Instance) -> str:
        now = _now()
        key = (inst.environment, inst.kind, inst.name)
        rows, _ = self._write(
            f"create {inst.kind.lower()}.{inst.name}",
            _UPSERT,
            (_new_id(), *key, inst.canonical(), now, now),
        )
        return str(rows[0][0])

    def update(self, inst: Instance, provider_id: str) -> None:
        _, changed = self._write(
            f"update {inst.kind.lower()}.{inst.name}",
            "UPDATE objects SET body = ?, updated_at = ?"
            " WHERE environment = ? AND kind = ? AND name = ?",
            (inst.canonical(), _now(), inst.environment, inst.kind, inst.name),
        )
        if changed == 0:
            raise ProviderError(
                f"provider {self.name!r} ({self.path}): {inst.kind.lower()}.{inst.name} in "
                f"{inst.environment!r} no longer exists (removed outside reconciler); "
                "`reconciler drift --heal` recreates it"
            )

    def delete(self, kind: str, name: str, environment: str, provider_id: str | None) -> None:
        self._write(
            f"delete {kind.lower()}.{name}",
            "DELETE FROM objects WHERE environment = ? AND kind = ? AND name = ?",
            (environment, kind, name),
        )

    can_invoke: ClassVar[bool] = True
    #: A suspended deployment is a flag in its body: it reads as Suspended, takes no runs.
    suspend_refusal: ClassVar[str | None] = None

    def status(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> HealthStatus:
        live = self.read(kind, name, environment, provider_id)
        if live is None:
            return HealthStatus("Missing")
        if live.body.get("suspended") is True:
            return HealthStatus("Suspended", "suspended: true")
        return HealthStatus("Healthy")

    def invoke(self, target: InvokeTarget, input: Mapping[str, Any], deadline: float) -> Invocation:
        """Offline and deterministic, no model: the deployment's prompt template rendered
        with the input (without a prompt, the model's name and the input as JSON), so a
        first `run` works with nothing installed. Tokens are words, counted the same way
        every time. The object must exist in the registry, as for any vendor."""
        started = time.monotonic()
        live = self.read("Deployment", target.name, target.environment, target.provider_id)
        if live is None:
            raise ProviderError(
                f"provider {self.name!r} ({self.path}): deployment.{target.name} in "
                f"{target.environment!r} does not exist (removed outside reconciler)"
            )
        spec = target.spec
        prompt = spec.get("prompt")
        template = prompt.get("template") if isinstance(prompt, Mapping) else None
        if isinstance(template, str):
            prompt_text = render(template, input)
            output = prompt_text
        else:
            prompt_text = json.dumps(dict(input), sort_keys=True)
            output = f"[{spec.get('model', '?')}] {prompt_text}"
        usage = Usage(len(prompt_text.split()), len(output.split()))
        return Invocation(output, usage, time.monotonic() - started)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
