"""apply through the CLI against the fake deployment API on 127.0.0.1: crash safety,
locking, a provider that is down, drift and heal, and tokens that never leak."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import commit_all, init_repo, run_cli, write_files
from fakes.deploy_api import FakeDeployApi

from reconciler.providers.http import HttpProvider

TOKEN = "tok-SECRET-9f8e7d6c5b4a"
VENDOR = "vendor-SECRET-0a1b2c3d"

ENV = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: dev}
spec: {description: test}
"""

PROVIDER = """apiVersion: reconciler/v1
kind: Provider
metadata: {name: api}
spec:
  type: http
  environments: [dev]
  config: {baseUrl: "%s", timeoutSeconds: 2, retries: 4}
  credentials: {tokenEnv: REGISTRY_TOKEN}
"""

DEPLOYMENT = """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: svc-%(i)03d}
spec:
  environments: [dev]
  provider: api
  model: gpt-4o-mini
  endpoint: /svc-%(i)03d
  options: {temperature: 0.2}
  env: {VENDOR_KEY: {secretEnv: VENDOR_KEY}}
"""


def make_repo(root: Path, url: str, count: int) -> Path:
    init_repo(root)
    files: dict[str, str | bytes] = {
        "manifests/env.yaml": ENV,
        "manifests/provider.yaml": PROVIDER % url,
        ".gitignore": ".reconciler/\n",
    }
    for i in range(count):
        files[f"manifests/svc-{i:03d}.yaml"] = DEPLOYMENT % {"i": i}
    write_files(root, files)
    commit_all(root, "services")
    return root


SECRETS = {"REGISTRY_TOKEN": TOKEN, "VENDOR_KEY": VENDOR}


def cli(repo: Path, *args: str) -> tuple[int, str]:
    r = run_cli(["--repo", str(repo), *args], env=SECRETS)
    out = r.out + r.err
    assert TOKEN not in out and VENDOR not in out, "a secret leaked into the output"
    assert "Traceback" not in out
    return r.code, out


def popen_apply(repo: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--repo", str(repo), "apply", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **SECRETS},
    )


@pytest.fixture
def api() -> Iterator[FakeDeployApi]:
    with FakeDeployApi(token=TOKEN) as server:
        yield server


@pytest.mark.slow  # a real process, killed
def test_kill_9_midway_then_rerun_converges_without_duplicates(
    api: FakeDeployApi, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "r", api.url, 45)
    api.latency = 0.05
    proc = popen_apply(repo, "--parallelism", "4")
    deadline = time.monotonic() + 60
    while sum(api.create_count.values()) < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    created_before = sum(api.create_count.values())
    assert 12 <= created_before < 45, "killed midway"
    api.latency = 0.0

    code, out = cli(repo, "apply")
    assert code == 0, out
    assert len(api.objects()) == 45
    assert set(api.create_count.values()) == {1}, "each deployment created exactly once"
    code, out = cli(repo, "plan", "--detailed-exitcode")
    assert code == 0 and "no changes" in out
    code, out = cli(repo, "status", "--json")
    recorded = {row["name"]: row["provider_id"] for row in json.loads(out)}
    live = {o["name"]: o["id"] for o in api.objects()}
    assert recorded == live
    code, out = cli(repo, "history", "--json")
    outcomes = [r["outcome"] for r in json.loads(out)]
    assert outcomes == ["applied", "interrupted"]


@pytest.mark.slow  # a real process, killed
def test_two_applies_at_once_one_is_locked_out(api: FakeDeployApi, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", api.url, 20)
    provider = repo / "manifests/provider.yaml"  # the held call must not reach its deadline
    text = provider.read_text()
    assert "timeoutSeconds: 2," in text
    provider.write_text(text.replace("timeoutSeconds: 2,", "timeoutSeconds: 120,"))
    commit_all(repo, "a long deadline")
    api.create_gate = threading.Event()  # the first apply is held at its first create
    try:
        first = popen_apply(repo, "--parallelism", "1")
        assert api.create_arrived.wait(60), "the first apply never reached the provider"
        second = popen_apply(repo)
        _, err2 = second.communicate(timeout=60)
    finally:
        api.create_gate.set()  # then it goes on
    first.communicate(timeout=120)
    assert first.returncode == 0
    assert second.returncode == 4
    assert "locked by run" in err2 and f"pid {first.pid}" in err2
    assert set(api.create_count.values()) == {1} and len(api.objects()) == 20


def test_provider_down_fails_with_one_line_and_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    repo = make_repo(tmp_path / "r", url, 3)
    waits: list[float] = []
    made = HttpProvider.__init__

    def waiting_on_a_fake_clock(self: HttpProvider, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        self.sleep = waits.append  # the backoff between retries recorded, not slept

    monkeypatch.setattr(HttpProvider, "__init__", waiting_on_a_fake_clock)  # run in-process
    code, out = cli(repo, "apply")
    assert code == 1
    assert waits, "a refused connection is retried with backoff"
    assert "'api'" in out and url in out
    code, out = cli(repo, "status", "--json")
    assert json.loads(out) == []
    code, out = cli(repo, "history", "--json")
    run = json.loads(out)[0]
    assert run["outcome"] == "failed" and run["counts"]["failed"] >= 1


def test_retries_then_succeeds(api: FakeDeployApi, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", api.url, 2)
    api.fail_next(503, times=2)
    api.fail_next(429, retry_after=0)
    code, out = cli(repo, "apply", "--parallelism", "1")
    assert code == 0, out
    assert len(api.objects()) == 2


def test_drift_detected_and_healed(api: FakeDeployApi, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", api.url, 2)
    assert cli(repo, "apply")[0] == 0
    assert cli(repo, "drift")[0] == 0
    api.tamper("deployments", "dev", "svc-000", options={"temperature": 0.9})
    api.remove("deployments", "dev", "svc-001")
    code, out = cli(repo, "drift")
    assert code == 2
    assert "options.temperature: recorded 0.2, live 0.9" in out
    assert "svc-001" in out and "missing" in out
    code, out = cli(repo, "apply", "--heal")
    assert code == 0, out
    assert cli(repo, "drift")[0] == 0
    assert api.get("deployments", "dev", "svc-000")["options"] == {"temperature": 0.2}
    code, out = cli(repo, "history", "--json")
    assert json.loads(out)[0]["trigger"] == "heal"


def test_drift_status_and_heal_use_the_provider_settings_of_the_applied_commit(
    api: FakeDeployApi, tmp_path: Path
) -> None:
    """A commit that only points the provider at another host changes no plan, so no
    gate looks at it: `drift`, `status` and `apply --heal` still read and write where
    the recorded objects were written, and the token never goes to the new host."""
    repo = make_repo(tmp_path / "r", api.url, 1)
    assert cli(repo, "apply")[0] == 0
    with FakeDeployApi() as elsewhere:
        write_files(repo, {"manifests/provider.yaml": PROVIDER % elsewhere.url})
        commit_all(repo, "point the provider elsewhere")
        code, out = cli(repo, "plan")
        assert code == 0 and "no changes" in out.lower(), out
        api.tamper("deployments", "dev", "svc-000", options={"temperature": 0.9})
        code, out = cli(repo, "drift")
        assert code == 2, out
        assert "options.temperature: recorded 0.2, live 0.9" in out
        code, out = cli(repo, "status")
        assert code == 0, out
        assert cli(repo, "apply", "--heal")[0] == 0
        assert api.get("deployments", "dev", "svc-000")["options"] == {"temperature": 0.2}
        assert elsewhere.requests == [], "the token went where nobody approved"


def test_secrets_reach_the_provider_but_never_state_or_logs(
    api: FakeDeployApi, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "r", api.url, 2)
    r = run_cli(["--repo", str(repo), "--log-format", "json", "-vv", "apply"], env=SECRETS)
    assert r.code == 0, r.err
    assert TOKEN not in r.out + r.err and VENDOR not in r.out + r.err
    assert api.get("deployments", "dev", "svc-000")["env"]["VENDOR_KEY"] == VENDOR
    for f in (repo / ".reconciler").iterdir():
        data = f.read_bytes()
        assert TOKEN.encode() not in data and VENDOR.encode() not in data, f.name
    assert all("authorization" not in rq.headers for rq in api.requests)
