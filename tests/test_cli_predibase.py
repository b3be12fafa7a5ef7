"""The predibase provider through the CLI (real processes) against its stand-in on
127.0.0.1: create, a re-apply that writes nothing, an update in place, a replacement
(the accelerator), a deployment that fails to become ready, 429s, drift and heal, and a
delete in a protected environment. No token in any output or file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import commit_all, init_repo, run_cli, write_files
from fakes.predibase import FakePredibase

TOKEN = "pb_SECRET0123456789abcdefgh"
ENV = {"PREDIBASE_API_TOKEN": TOKEN}

FILES = {
    ".gitignore": ".reconciler/\n",
    "manifests/environments.yaml": """apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
spec: {description: customer-facing, protected: true}
""",
    "manifests/providers.yaml": """apiVersion: reconciler/v1
kind: Provider
metadata: {name: pb}
spec:
  type: predibase
  environments: [production]
  config: {baseUrl: "%(pb)s", timeoutSeconds: 5, pollIntervalSeconds: 0.05}
  credentials: {tokenEnv: PREDIBASE_API_TOKEN}
""",
    "manifests/support-llm.yaml": """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: support-llm}
spec:
  environments: [production]
  provider: pb
  model: qwen3-8b
  scaling: {minReplicas: 0, maxReplicas: 2, hardware: a100_80gb_100}
  predibase: {cooldownSeconds: 1800, adapters: [support-bot/3]}
  risk: high
""",
}
LLM = "manifests/support-llm.yaml"


@dataclass
class World:
    repo: Path
    pb: FakePredibase

    def cli(self, *args: str) -> tuple[int, str]:
        r = run_cli(["--repo", str(self.repo), *args], env=ENV)
        out = r.out + r.err
        assert TOKEN not in out, "the token leaked into the output"
        assert "Traceback" not in out, out
        return r.code, out

    def edit(self, old: str, new: str) -> None:
        f = self.repo / LLM
        text = f.read_text()
        assert old in text, f"{old!r} not in {LLM}"
        f.write_text(text.replace(old, new, 1))
        commit_all(self.repo, "edit")

    def plan(self, *args: str) -> dict[str, dict[str, Any]]:
        code, out = self.cli("plan", "--json", *args)
        assert code == 0, out
        (env,) = json.loads(out[out.index("{") :])["environments"]
        return {c["name"]: c for c in env["changes"]}

    def live(self) -> dict[str, Any]:
        found = self.pb.deployment("support-llm")
        assert found is not None
        return found


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with FakePredibase(TOKEN, steps=3) as pb:
        repo = init_repo(tmp_path / "repo")
        files = dict(FILES)
        files["manifests/providers.yaml"] %= {"pb": pb.url}
        write_files(repo, files)
        commit_all(repo, "support LLM on Predibase")
        yield World(repo, pb)


def history(w: World) -> list[dict[str, Any]]:
    code, out = w.cli("history", "--json")
    assert code == 0, out
    runs = []
    for row in json.loads(out):
        code, shown = w.cli("show", row["id"], "--json")
        assert code == 0, shown
        runs.append(json.loads(shown))
    return runs


def test_create_then_a_reapply_writes_nothing_then_update_in_place(w: World) -> None:
    assert {n: c["action"] for n, c in w.plan().items()} == {"support-llm": "create"}
    code, out = w.cli("apply")
    assert code == 0, out
    live = w.live()
    assert live["status"] == "ready", "apply waited for readiness"
    assert live["config"]["preloadedAdapters"] == ["support-bot/3"]
    assert live["accelerator"] == {"id": "a100_80gb_100"}
    writes = w.pb.writes()
    assert writes == [("POST", "/v2/deployments")]

    assert w.plan() == {}
    code, out = w.cli("apply")
    assert code == 0, out
    assert w.pb.writes() == writes, "a no-op re-apply writes nothing"
    assert w.cli("drift")[0] == 0

    w.edit("maxReplicas: 2", "maxReplicas: 4")
    assert w.plan()["support-llm"]["action"] == "update"
    code, out = w.cli("apply")
    assert code == 0, out
    assert w.pb.writes()[-1] == ("PUT", "/v2/deployments/support-llm")
    assert w.live()["config"]["maxReplicas"] == 4 and w.live()["status"] == "ready"
    assert w.pb.creates == {"support-llm": 1}
    for f in (w.repo / ".reconciler").rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f"the token is in {f.name}"


def test_a_new_accelerator_is_a_replacement_that_says_why(w: World) -> None:
    assert w.cli("apply")[0] == 0
    first = w.live()["uuid"]
    w.edit("hardware: a100_80gb_100", "hardware: h100_80gb_100")
    change = w.plan()["support-llm"]
    assert change["action"] == "replace"
    assert str(change["reason"]).startswith(
        "scaling.hardware cannot be changed in place on pb: Predibase cannot change a "
        "deployment's accelerator by an update; deletes Predibase deployment 'support-llm' "
        "for good"
    )
    code, out = w.cli("plan")
    assert "-/+ deployment.support-llm" in out and "for good" in out
    code, out = w.cli("apply")
    assert code == 0, out
    assert [m for m, _ in w.pb.writes()][-2:] == ["DELETE", "POST"]
    live = w.live()
    assert live["accelerator"] == {"id": "h100_80gb_100"} and live["uuid"] != first
    assert live["status"] == "ready"


def test_a_deployment_that_fails_fails_the_run_and_is_recorded_failed(w: World) -> None:
    w.pb.fail_next_deploy()
    code, out = w.cli("apply")
    assert code == 1, out
    assert "deployment.support-llm: failed" in out and "Degraded: failed" in out
    (run,) = history(w)
    assert run["outcome"] == "failed"
    (change,) = run["changes"]
    assert change["outcome"] == "failed"
    code, out = w.cli("status", "--json")
    assert json.loads(out) == [], "not applied until ready"


def test_429_answers_are_waited_out(w: World) -> None:
    w.pb.fail_next(429, retry_after=0.2, method="POST", body={"error": "rate limit exceeded"})
    w.pb.fail_next(429, times=2, retry_after=0.1, method="GET", path="/v2/deployments/")
    code, out = w.cli("apply")
    assert code == 0, out
    posts = [r for r in w.pb.requests if r.method == "POST"]
    assert len(posts) == 2 and w.pb.creates == {"support-llm": 1}
    assert w.live()["status"] == "ready"


def test_drift_is_detected_and_healed(w: World) -> None:
    assert w.cli("apply")[0] == 0
    w.pb.tamper("support-llm", "config.maxReplicas", 1)
    w.pb.tamper("support-llm", "config.preloadedAdapters", [])
    code, out = w.cli("drift")
    assert code == 2, out
    assert "production: 0 in sync, 1 drifted" in out
    assert "scaling.maxReplicas: recorded 2, live 1" in out
    assert 'predibase.adapters: recorded ["support-bot/3"], live []' in out
    code, out = w.cli("apply", "--heal")
    assert code == 0, out
    assert w.cli("drift")[0] == 0
    assert w.live()["config"]["maxReplicas"] == 2 and w.pb.creates == {"support-llm": 1}


def test_a_delete_in_a_protected_environment_needs_allow_delete(w: World) -> None:
    assert w.cli("apply")[0] == 0
    (w.repo / LLM).unlink()
    commit_all(w.repo, "retire the support LLM")
    change = w.plan()["support-llm"]
    assert change["action"] == "delete" and "--allow-delete" in str(change["refused"])
    assert "for good" in str(change["reason"])
    code, out = w.cli("apply")
    assert code == 3 and "needs --allow-delete" in out, out
    assert w.pb.deployment("support-llm") is not None
    code, out = w.cli("apply", "--allow-delete")
    assert code == 0, out
    assert w.pb.deployment("support-llm") is None


def test_a_deployment_made_by_hand_is_not_taken_over(w: World) -> None:
    w.pb.create_by_hand("support-llm", {"baseModel": "qwen3-8b"}, "Alice's experiment")
    code, out = w.cli("apply")
    assert code == 1, out
    assert "was not made by reconciler" in out and "nothing was changed" in out
    assert w.pb.writes() == []
    assert w.live()["description"] == "Alice's experiment"


def test_plan_time_errors_are_located_without_the_network(w: World) -> None:
    w.pb.stop()
    w.edit("hardware: a100_80gb_100", "hardware: A100 80GB")
    w.edit("adapters: [support-bot/3]", "adapters: [support-bot]")
    code, out = w.cli("validate")
    assert code == 1, out
    assert "manifests/support-llm.yaml:8:" in out and "not a Predibase accelerator" in out
    assert "manifests/support-llm.yaml:9:" in out and "not an adapter id" in out
    w.edit("cooldownSeconds: 1800", "cooldownSeconds: 60")
    code, out = w.cli("validate")
    assert code == 1 and "manifests/support-llm.yaml:9:" in out, out
