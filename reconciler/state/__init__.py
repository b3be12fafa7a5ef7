"""Recorded state: what was applied where, and every run. One `Store` (store.py) owns the
semantics over a backend (backend.py) that SQLite, PostgreSQL or git implements."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from reconciler.errors import ConfigError
from reconciler.state.backend import Backend
from reconciler.state.base import (
    AppliedRecord,
    ChangeRecord,
    LockInfo,
    RunRecord,
    StateStore,
    fingerprint,
)
from reconciler.state.store import Store
from reconciler.state.urls import mask_url

#: The embedded default: a SQLite file inside the manifests repo (git-ignored).
DEFAULT_STATE_URL = "sqlite:///.reconciler/state.db"

__all__ = [
    "DEFAULT_STATE_URL",
    "AppliedRecord",
    "ChangeRecord",
    "LockInfo",
    "RunRecord",
    "StateStore",
    "Store",
    "fingerprint",
    "mask_url",
    "open_backend",
    "open_state",
]


def open_state(
    url: str, *, repo_root: Path, env: Mapping[str, str], read_only: bool = False
) -> StateStore:
    """`sqlite:///rel/path.db` (relative to the manifests repo), `sqlite:////abs.db`, or
    `git://refs/...` (commits on that ref of the repo holding `repo_root`, pushed to its
    `origin` when it has one), or `postgresql://user:password@host:port/dbname` (libpq's
    URL; `postgres://` too).

    `env` is the command's environment (`Settings.env`), where the store reads
    RECONCILER_FINGERPRINT_KEY. `read_only` stores never create, migrate or write: plan,
    drift, status, history and approvals use them."""
    backend = open_backend(url, repo_root=repo_root, read_only=read_only)
    return Store(backend, env=env, read_only=read_only)


def open_backend(url: str, *, repo_root: Path, read_only: bool = False) -> Backend:
    """The storage `url` names (see `open_state`); opened `read_only`, it never creates
    or migrates anything."""
    if url.startswith("git://"):
        from reconciler.state.git import GitBackend, parse_git_url

        return GitBackend(repo_root, parse_git_url(url), url=url)
    if url.startswith("sqlite://"):
        from reconciler.state.sqlite import SQLiteBackend

        rest = url.removeprefix("sqlite://")
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(
                f"state URL {url!r} needs a path: sqlite:///relative.db or sqlite:////abs.db"
            )
        raw = rest[1:]
        path = Path(raw) if raw.startswith("/") else repo_root / raw
        return SQLiteBackend(path, url=url, read_only=read_only)
    if url.startswith(("postgresql://", "postgres://")):
        from reconciler.state.postgres import PostgresBackend  # psycopg only when asked for

        return PostgresBackend(url, read_only=read_only)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise ConfigError(
        f"unknown state backend {scheme!r} in {mask_url(url)!r}: use sqlite:///path/to/state.db, "
        "git://refs/reconciler/state or postgresql://user@host/dbname"
    )
