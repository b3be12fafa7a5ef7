"""What the agent tests share: a remote (a bare repository) with a clone to push from,
`reconciler agent` as a real process with its log lines, metrics and health, and
manifests for an http provider on the fake deployment API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import httpx
from conftest import commit_all, git, init_repo, write_files
from prometheus_client.parser import text_string_to_metric_families

from reconciler.state import open_state
from reconciler.state.base import RunRecord

TOKEN = "tok-SECRET-agent-9f8e7d6c"
VENDOR = "vendor-SECRET-agent-0a1b2c"
SECRETS = {"REGISTRY_TOKEN": TOKEN, "VENDOR_KEY": VENDOR}

PROVIDER = """apiVersion: reconciler/v1
kind: Provider
metadata: {name: api}
spec:
  type: http
  environments: [%(envs)s]
  config: {baseUrl: "%(url)s", timeoutSeconds: 5, retries: 2}
  credentials: {tokenEnv: REGISTRY_TOKEN}
"""

DEPLOYMENT = """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: %(name)s}
spec:
  environments: [%(envs)s]
  provider: api
  model: %(model)s
  endpoint: /%(name)s
  options: {temperature: 0.2}
  env: {VENDOR_KEY: {secretEnv: VENDOR_KEY}}
"""


def environment(name: str, spec: str) -> str:
    return (
        f"apiVersion: reconciler/v1\nkind: Environment\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )


def deployments(
    names: Sequence[str], envs: str = "dev", model: str = "gpt-4o-mini"
) -> dict[str, str]:
    return {
        f"manifests/{n}.yaml": DEPLOYMENT % {"name": n, "envs": envs, "model": model} for n in names
    }


class Remote:
    """`origin`: a bare repository, and a clone of it to commit and push from."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "remote.git"
        self.bare.mkdir(parents=True)
        git(self.bare, "init", "-q", "--bare", "-b", "main")
        self.work = init_repo(root / "work")
        git(self.work, "remote", "add", "origin", str(self.bare))

    def push(self, files: Mapping[str, str], message: str) -> str:
        write_files(self.work, files)
        sha = commit_all(self.work, message)
        git(self.work, "push", "-q", "origin", "main")
        return sha


class AgentProcess:
    """`reconciler agent` as users run it: a real process, logs (JSON lines) collected."""

    def __init__(
        self,
        remote: Remote,
        clone: Path,
        state: str,
        *args: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI"))}
        full.update(SECRETS)
        full["RECONCILER_REMOTE"] = str(remote.bare)  # what --remote defaults to
        full.update(env or {})
        argv = [
            sys.executable, "-m", "reconciler", "--state", state, "--log-format", "json", "-v",
            "agent", "--clone", str(clone), "--port", "0", *args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full
        )
        self.lines: list[str] = []
        self._mu = threading.Lock()
        #: Notified with every line read and when the output ends.
        self._read_more = threading.Condition(self._mu)
        self._ended = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        first = self.wait_for_line(
            lambda line: line.startswith("agent: ") or '"agent started"' in line
        )
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", first)
        assert found, first
        self.base = f"http://127.0.0.1:{found.group(1)}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        try:
            for line in self.proc.stderr:
                with self._read_more:
                    self.lines.append(line.rstrip("\n"))
                    self._read_more.notify_all()
        finally:
            with self._read_more:
                self._ended = True
                self._read_more.notify_all()

    def output(self) -> str:
        with self._mu:
            return "\n".join(self.lines)

    def wait_for_line(self, check: Callable[[str], bool], timeout: float = 60) -> str:
        """The first line for which `check` holds, woken by each line read (no polling)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._read_more:
            while True:
                found = next((line for line in self.lines[seen:] if check(line)), None)
                if found is not None:
                    return found
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    break
                self._read_more.wait(left)
        if self._ended:
            self.proc.wait(30)
            raise AssertionError(f"the agent exited {self.proc.returncode}:\n{self.output()}")
        raise AssertionError(f"no such line within {timeout} s:\n{self.output()}")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        with self._mu:
            lines = list(self.lines)
        for line in lines:
            if not line.startswith("{"):
                continue
            ev = json.loads(line)
            if name is None or ev.get("event") == name:
                out.append(ev)
        return out

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, timeout=10)

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value from /metrics (0 when it has none yet)."""
        text = self.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    def wait_until(
        self, check: Callable[[], bool], what: str, timeout: float = 60, step: float = 0.25
    ) -> None:
        """Until `check` holds: asked again at each line the agent writes (what it does
        shows in its log), and at least every `step` seconds for what does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._read_more:
                seen = len(self.lines)
            if check():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited while waiting for {what}:\n{self.output()}")
            with self._read_more:
                if len(self.lines) == seen and not self._ended:
                    self._read_more.wait(min(step, max(0.0, deadline - time.monotonic())))
        raise AssertionError(f"{what}: not within {timeout} s\n{self.output()[-6000:]}")

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        self._reader.join(5)
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def runs(state: str, root: Path, environment: str | None = None) -> list[RunRecord]:
    store = open_state(state, repo_root=root, env={}, read_only=True)
    try:
        return store.runs(environment)
    finally:
        store.close()


def at(ev: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(str(ev["timestamp"]).replace("Z", "+00:00"))
