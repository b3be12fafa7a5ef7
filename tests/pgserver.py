"""A real PostgreSQL server for the tests (and `bench/state.py`).

`RECONCILER_TEST_POSTGRES_URL` (a superuser's URL) when set; else a throwaway cluster
made with the distribution's `initdb` and `pg_ctl` (/usr/lib/postgresql/*/bin) in a temp
dir, listening on a free port of 127.0.0.1 with password authentication. `initdb`
refuses to run as root, so as root the cluster belongs to the `postgres` user. When no
server can be had the PostgreSQL tests skip, except in CI (`CI` set), where they fail:
CI installs the server (.ci/run) and must not pass without running them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

URL_VAR = "RECONCILER_TEST_POSTGRES_URL"


class PgServer:
    """A server the tests may create schemas and databases on."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.password = psycopg.conninfo.conninfo_to_dict(url).get("password")

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url, autocommit=True)

    def fresh_schema(self) -> str:
        """The URL of an empty schema of its own (the state's tables go there)."""
        name = "t_" + secrets.token_hex(6)
        with self.admin() as conn:
            conn.execute(f"CREATE SCHEMA {name}")  # type: ignore[arg-type]
        return with_search_path(self.url, name)

    def fresh_database(self) -> str:
        """The URL of an empty database of its own."""
        name = "d_" + secrets.token_hex(6)
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return self.url.rsplit("/", 1)[0] + "/" + name


def with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version_key(path: str) -> int:
    part = path.split("/")[4]
    return int(part) if part.isdigit() else 0


class Cluster:
    """A throwaway cluster; `stop()` removes it."""

    def __init__(self, *, durable: bool = False, max_connections: int = 300) -> None:
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb) installed")
        self.dir = Path(tempfile.mkdtemp(prefix="reconciler-pg-"))
        owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self._as: list[str] = ["runuser", "-u", "postgres", "--"] if owner else []
        if owner is not None:
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        password = "pw-" + secrets.token_hex(8)
        pwfile = self.dir / "pwfile"
        pwfile.write_text(password + "\n")
        if owner is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        data = self.dir / "data"
        self._pg_ctl = [*self._as, str(bindir / "pg_ctl"), "-D", str(data)]
        self._run(
            [*self._as, str(bindir / "initdb"), "-D", str(data), "-U", "reconciler",
             f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust",
             "-E", "UTF8", "--no-sync"],
        )  # fmt: skip
        port = _free_port()
        settings = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={port}",
            f"-c unix_socket_directories={self.dir}",
            f"-c max_connections={max_connections}",
        ]
        if not durable:  # tests: commits need not survive a crash of the server
            settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            [*self._pg_ctl, "-l", str(self.dir / "log"), "-w", "-t", "60",
             "-o", " ".join(settings), "start"],
        )  # fmt: skip
        self.url = f"postgresql://reconciler:{password}@127.0.0.1:{port}/postgres"

    def _run(self, argv: list[str]) -> None:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=self.dir)
        if p.returncode != 0:
            log = self.dir / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            self.stop()
            raise RuntimeError(f"{argv[len(self._as)]} failed: {p.stderr or p.stdout}{tail}")

    def stop(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [*self._pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60
            )
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def server(*, durable: bool = False) -> Iterator[PgServer]:
    """RECONCILER_TEST_POSTGRES_URL's server, or a throwaway cluster for the block."""
    url = os.environ.get(URL_VAR)
    if url:
        yield PgServer(url)
        return
    cluster = Cluster(durable=durable)
    try:
        yield PgServer(cluster.url)
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """One server per test process; skipped without one, but never in CI."""
    try:
        cm = server()
        pg = cm.__enter__()
    except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests, but no server could start: {e}")
        pytest.skip(f"no PostgreSQL server: {e}")
    try:
        yield pg
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture
def postgres_url(postgres_server: PgServer) -> str:
    """An empty schema of its own on the test server."""
    return postgres_server.fresh_schema()
