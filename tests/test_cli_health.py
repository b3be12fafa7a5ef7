"""Apply waits for health, through the CLI (real processes) against the Hugging Face
Inference Endpoints stand-in on 127.0.0.1: an endpoint that goes pending →
initializing → running over several polls, one that never runs (the readiness timeout,
the run deadline, `--rollback-on-failure`), one that fails (Degraded), 429 answers to
health polls, and a kill -9 while waiting. `status` and `drift` show health."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import commit_all, init_repo, run_cli, write_files
from fakes.hf_endpoints import FakeHuggingFace
from fakes.loopback import Answer, Request

HF_TOKEN = "hf_SECRET0123456789abcdefgh"
ENV = {"HF_TOKEN": HF_TOKEN}

FILES = {
    ".gitignore": ".reconciler/\n",
    "manifests/environments.yaml": """apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
spec: {description: customer-facing}
""",
    "manifests/providers.yaml": """apiVersion: reconciler/v1
kind: Provider
metadata: {name: hf}
spec:
  type: huggingface
  environments: [production]
  config: {baseUrl: "%(hf)s", namespace: acme, timeoutSeconds: 5, pollIntervalSeconds: 0.05}
  credentials: {tokenEnv: HF_TOKEN}
""",
    "manifests/reranker.yaml": """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: reranker}
spec:
  environments: [production]
  provider: hf
  model: BAAI/bge-reranker-v2-m3
  scaling: {minReplicas: 1, maxReplicas: 4, hardware: nvidia-a10g}
  huggingface: {task: sentence-ranking}
""",
}
EP = "/v2/endpoint/acme/reranker"


@dataclass
class World:
    repo: Path
    hf: FakeHuggingFace

    def cli(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        r = run_cli(
            ["--repo", str(self.repo), "--log-format", "json", *args], env={**ENV, **(env or {})}
        )
        assert HF_TOKEN not in r.out + r.err, "the token leaked into the output"
        assert "Traceback" not in r.err, r.err
        return r.code, r.out, r.err

    def edit(self, rel: str, old: str, new: str) -> None:
        f = self.repo / rel
        text = f.read_text()
        assert old in text, f"{old!r} not in {rel}"
        f.write_text(text.replace(old, new, 1))
        commit_all(self.repo, f"edit {rel}")

    def polls(self) -> list[Request]:
        with self.hf.lock:
            return [r for r in self.hf.requests if r.method == "GET" and r.path == EP]

    def state(self) -> str:
        ep = self.hf.endpoint("acme", "reranker")
        assert ep is not None
        return str(ep["status"]["state"])


def make_world(tmp_path: Path, hf: FakeHuggingFace) -> World:
    repo = init_repo(tmp_path / "repo")
    files = dict(FILES)
    files["manifests/providers.yaml"] %= {"hf": hf.url}
    write_files(repo, files)
    commit_all(repo, "reranker on Hugging Face")
    return World(repo, hf)


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with FakeHuggingFace(HF_TOKEN, steps=3) as hf:
        yield make_world(tmp_path, hf)


def events(err: str, name: str) -> list[dict[str, Any]]:
    """The JSON log lines (`--log-format json`) with event `name`."""
    out = []
    for line in err.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("event") == name:
                out.append(doc)
    return out


def history(w: World) -> list[dict[str, Any]]:
    """The recorded runs, newest first, each with its changes (`show --json`)."""
    code, out, _ = w.cli("history", "--json")
    assert code == 0, out
    runs = []
    for row in json.loads(out):
        code, shown, _ = w.cli("show", row["id"], "--json")
        assert code == 0, shown
        runs.append(json.loads(shown))
    return runs


def test_apply_waits_until_the_endpoint_runs_and_status_and_drift_show_health(
    w: World,
) -> None:
    code, out, err = w.cli("apply")
    assert code == 0, out + err
    assert w.state() == "running"
    # the create's own look-up, then pending, initializing ×2, running
    assert len(w.polls()) >= 5
    seen = [(e["health"], e.get("message")) for e in events(err, "health")]
    assert seen == [
        ("Progressing", "Endpoint is pending"),
        ("Progressing", "Endpoint is initializing"),
        ("Healthy", "Endpoint is ready"),
    ]
    assert events(err, "change")[0]["outcome"] == "applied"

    code, out, _ = w.cli("status", "--json")
    assert code == 0, out
    (row,) = json.loads(out)
    assert row["health"] == "Healthy" and row["health_message"] == "Endpoint is ready"
    code, out, _ = w.cli("status")
    assert "Healthy" in out

    w.hf.tamper("acme", "reranker", "status.state", "scaledToZero")
    w.hf.tamper("acme", "reranker", "status.message", "Endpoint is scaled to zero")
    code, out, _ = w.cli("drift", "--json")
    assert code == 0, out
    (item,) = json.loads(out)["production"]
    assert item["status"] == "in-sync"
    assert (item["health"], item["health_message"]) == ("Suspended", "Endpoint is scaled to zero")
    code, out, _ = w.cli("drift")
    assert "production: 1 in sync, 0 drifted" in out and "Suspended" in out


def test_an_endpoint_that_never_runs_fails_within_its_readiness_timeout(w: World) -> None:
    w.edit(
        "manifests/reranker.yaml", "  huggingface:", "  readinessTimeoutSeconds: 1\n  huggingface:"
    )
    w.hf.hold_next_deploy()
    started = time.monotonic()
    code, out, err = w.cli("apply")
    took = time.monotonic() - started
    assert code == 1, out + err
    assert took < 30, f"apply took {took:.1f} s against a readiness timeout of 1 s"
    assert (
        "deployment.reranker: failed: not Healthy within its readiness timeout of 1 s: "
        "Progressing: Endpoint is pending"
    ) in out
    (run,) = history(w)
    assert run["outcome"] == "failed"
    (change,) = run["changes"]
    assert change["outcome"] == "failed" and "readiness timeout of 1 s" in change["error"]
    assert change["provider_id"] == "acme/reranker", "the object made is recorded"
    code, out, _ = w.cli("status", "--json")
    assert json.loads(out) == [], "not applied until healthy"

    # the next run takes the same endpoint (no second one) and waits for it
    code, out, err = w.cli("apply")
    assert code == 0, out + err
    assert w.hf.creates == {"reranker": 1}
    assert w.state() == "running"


def test_rollback_on_failure_restores_the_old_spec_and_waits_for_it(w: World) -> None:
    assert w.cli("apply")[0] == 0
    w.edit(
        "manifests/reranker.yaml",
        "maxReplicas: 4, hardware: nvidia-a10g}",
        "maxReplicas: 6, hardware: nvidia-a10g}\n  readinessTimeoutSeconds: 1",
    )
    w.hf.hold_next_deploy()  # the update stays `updating`; the restore then runs
    code, out, err = w.cli("apply", "--rollback-on-failure")
    assert code == 1, out + err
    assert "not Healthy within its readiness timeout of 1 s" in out
    assert "restored 1 change(s) (--rollback-on-failure)" in out
    ep = w.hf.endpoint("acme", "reranker")
    assert ep is not None and ep["compute"]["scaling"]["maxReplica"] == 4
    assert w.state() == "running", "the restore waited for the old spec to run"
    waited = [e for e in events(err, "health") if e["health"] == "Healthy"]
    assert waited, "the restored endpoint's health was followed"
    run = history(w)[0]
    assert run["outcome"] == "failed" and run["details"]["rolled_back"] == ["deployment.reranker"]
    code, out, _ = w.cli("status", "--json")
    (row,) = json.loads(out)
    assert row["health"] == "Healthy"


def test_a_failed_endpoint_is_degraded_and_fails_the_change(w: World) -> None:
    w.hf.fail_next_deploy("CUDA out of memory on nvidia-a10g")
    code, out, err = w.cli("apply")
    assert code == 1, out + err
    assert "deployment.reranker: failed: Degraded: CUDA out of memory on nvidia-a10g" in out
    assert [e["health"] for e in events(err, "health")][-1] == "Degraded"
    assert history(w)[0]["outcome"] == "failed"


class Throttling(FakeHuggingFace):
    """Answers the first two health polls of an initializing endpoint with 429."""

    def __init__(self, token: str) -> None:
        super().__init__(token, steps=3)
        self.throttled: list[float] = []
        self.after: list[float] = []

    def route(self, req: Request) -> Answer:
        ep = self._endpoints.get(("acme", "reranker"))
        if req.method == "GET" and req.path == EP and ep is not None:
            if ep["status"]["state"] == "initializing" and len(self.throttled) < 2:
                self.throttled.append(time.monotonic())
                return Answer(429, {"error": "rate limited"}, {"Retry-After": "1"})
            if self.throttled:
                self.after.append(time.monotonic())
        return super().route(req)


def test_a_429_to_a_health_poll_is_honoured(tmp_path: Path) -> None:
    with Throttling(HF_TOKEN) as hf:
        w = make_world(tmp_path, hf)
        code, out, err = w.cli("apply")
    assert code == 0, out + err
    assert len(hf.throttled) == 2
    assert hf.throttled[1] - hf.throttled[0] >= 0.95, "asked again before Retry-After"
    assert hf.after[0] - hf.throttled[1] >= 0.95, "asked again before Retry-After"
    later = events(err, "health.later")
    assert [e["wait"] for e in later] == [1, 1]
    assert "429 to a health poll" in later[0]["reason"]


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_the_run_deadline_fails_the_run_and_releases_the_lock(w: World, how: str) -> None:
    args: list[str] = []
    env: dict[str, str] = {}
    source = {
        "flag": "--run-timeout",
        "env": "RECONCILER_RUN_TIMEOUT",
        "config": "reconciler.yaml runTimeoutSeconds",
    }[how]
    if how == "flag":
        args = ["--run-timeout", "1.5"]
    elif how == "env":
        env = {"RECONCILER_RUN_TIMEOUT": "1.5"}
    else:
        (w.repo / "reconciler.yaml").write_text("runTimeoutSeconds: 1.5\n")
        commit_all(w.repo, "a run deadline")
    w.hf.hold_next_deploy()  # its own readiness timeout is 30 minutes
    started = time.monotonic()
    code, out, err = w.cli("apply", *args, env=env)
    took = time.monotonic() - started
    assert code == 1, out + err
    assert took < 30
    assert f"the run deadline of 1.5 s ({source}) passed" in out
    assert "deployment.reranker: failed: still Progressing: Endpoint is pending" in out
    run = history(w)[0]
    assert run["outcome"] == "failed" and "run deadline of 1.5 s" in run["details"]["deadline"]
    code, out, err = w.cli("apply")  # the lock was released: the next run goes ahead
    assert code == 0, out + err


def test_a_bad_run_timeout_is_a_clear_error(w: World) -> None:
    code, _, err = w.cli("apply", env={"RECONCILER_RUN_TIMEOUT": "soon"})
    assert code == 1
    assert "RECONCILER_RUN_TIMEOUT must be a positive number of seconds, got 'soon'" in err


@pytest.mark.slow  # a real process, killed
def test_kill_9_while_waiting_converges_on_rerun_without_a_second_endpoint(w: World) -> None:
    w.hf.hold_next_deploy()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--repo", str(w.repo), "apply"],
        env={**env, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(w.polls()) < 3 and time.monotonic() < deadline:  # created, being polled
            time.sleep(0.05)
        assert w.hf.creates == {"reranker": 1}
        assert proc.poll() is None, "apply is still waiting for the endpoint when killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    code, out, err = w.cli("apply")
    assert code == 0, out + err
    assert w.hf.creates == {"reranker": 1}
    assert w.state() == "running"
    code, out, _ = w.cli("status", "--json")
    assert [r["name"] for r in json.loads(out)] == ["reranker"]
