"""A real PgBouncer (the distribution's) on 127.0.0.1 in front of the test server, in
the pool mode asked for. Skipped where it is not installed, but never in CI (.ci/run
installs it next to the PostgreSQL server)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )


@contextmanager
def pgbouncer(server_url: str, *, mode: str, pool_size: int = 5) -> Iterator[str]:
    """The URL of a PgBouncer pooling `server_url`'s database in `mode`."""
    binary = _binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the PgBouncer tests, but pgbouncer is not installed")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    params = conninfo_to_dict(server_url)
    user, password = str(params["user"]), str(params.get("password") or "")
    root = Path(tempfile.mkdtemp(prefix="reconciler-pgbouncer-"))
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None  # it refuses root
    port = _free_port()
    (root / "users.txt").write_text(f'"{user}" "{password}"\n')
    (root / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={params['host']} port={params['port']}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = plain\nauth_file = {root / 'users.txt'}\n"
        f"pool_mode = {mode}\ndefault_pool_size = {pool_size}\n"
        "ignore_startup_parameters = options,extra_float_digits\n"
        f"logfile = {root / 'log'}\npidfile = {root / 'pid'}\n"
    )
    if owner is not None:
        for p in (root, root / "users.txt", root / "pgbouncer.ini"):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    # As that user by setuid in the child, not through runuser: stopped, runuser passes
    # SIGTERM on and then sleeps 2 s before a SIGKILL, however soon pgbouncer exits.
    run_as: dict[str, Any] = (
        {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if owner else {}
    )
    proc = subprocess.Popen(
        [binary, str(root / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **run_as,
    )
    url = f"postgresql://{quote(user)}:{quote(password)}@127.0.0.1:{port}/{params['dbname']}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (root / "log").read_text() if (root / "log").exists() else ""
                    raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()  # SIGTERM: pgbouncer shuts down at once
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)
