"""`reconciler serve` as a real process on 127.0.0.1 (any free port), for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str  # ends with "/"

    def get(self, path: str, **kw: object) -> httpx.Response:
        return httpx.get(self.url + path.lstrip("/"), timeout=30, **kw)  # type: ignore[arg-type]

    def stop(self) -> str:
        """Stop it; return what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


def start(
    repo: Path, env: Mapping[str, str], *args: str, global_args: Sequence[str] = ()
) -> Server:
    args = ("--port", "0", *args)
    """Start `reconciler serve --port 0 ARGS` and wait until it answers /healthz as ready."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI"))}
    full.update(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--repo", str(repo), *global_args, "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "dashboard on " not in line:
        proc.kill()
        raise AssertionError(f"serve did not start: {line}{proc.stderr.read()}")
    url = line.split("dashboard on ", 1)[1].split()[0]
    server = Server(proc, url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = server.get("/healthz")
        if r.status_code == 200 and r.json()["ready"]:
            return server
        time.sleep(0.1)
    server.stop()
    raise AssertionError("serve never became ready")
