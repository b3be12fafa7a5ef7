"""The together and replicate providers through the CLI (real processes) against their
stand-ins on 127.0.0.1: create, a re-apply that writes nothing, updates in place and by
replacement (and why), failed readiness and refused writes recorded as failed, 429s
honoured, drift detected and healed, deletes held by a protected environment and
Replicate's slow delete. No key or token in any output or state file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import commit_all, init_repo, run_cli, write_files
from fakes.replicate import MODELS, FakeReplicate
from fakes.together import FakeTogether

TG_KEY = "tg_SECRET0123456789abcdefgh"
R8_TOKEN = "r8_SECRET0123456789abcdefgh"
ENV = {"TOGETHER_API_KEY": TG_KEY, "REPLICATE_API_TOKEN": R8_TOKEN}
SECRETS = (TG_KEY, R8_TOKEN)
V1, V2 = MODELS["stability-ai/sdxl"]
LLAMA_V = MODELS["meta/meta-llama-3-8b-instruct"][0]

ENVIRONMENT = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
spec: {description: customer-facing, protected: true}
"""

PROVIDERS = """apiVersion: reconciler/v1
kind: Provider
metadata: {name: together}
spec:
  type: together
  environments: [production]
  config: {baseUrl: "%(together)s", timeoutSeconds: 5, pollIntervalSeconds: 0.05}
  credentials: {tokenEnv: TOGETHER_API_KEY}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: replicate}
spec:
  type: replicate
  environments: [production]
  config:
    baseUrl: "%(replicate)s"
    owner: acme
    timeoutSeconds: 5
    pollIntervalSeconds: 0.05
    deleteTimeoutSeconds: 0.2
  credentials: {tokenEnv: REPLICATE_API_TOKEN}
"""

CHAT = """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat}
spec:
  environments: [production]
  provider: together
  model: meta-llama/Llama-3.3-70B-Instruct-Turbo
  scaling: {minReplicas: 1, maxReplicas: 2, hardware: 2x_nvidia_h100_80gb_sxm}
  together: {inactiveTimeout: 60}
"""

SDXL = """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: sdxl}
spec:
  environments: [production]
  provider: replicate
  model: stability-ai/sdxl
  scaling: {minReplicas: 1, maxReplicas: 3, hardware: gpu-t4}
  replicate: {version: VERSION}
""".replace("VERSION", V1)


@dataclass
class World:
    repo: Path
    together: FakeTogether
    replicate: FakeReplicate

    def cli(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        # JSON log lines: the tests read the client's retry and health events
        full = ["--repo", str(self.repo), "--log-format", "json", *args]
        r = run_cli(full, env={**ENV, **(env or {})})
        both = r.out + r.err
        assert not [s for s in SECRETS if s in both], "a secret leaked into the output"
        assert "Traceback" not in both, both
        return r.code, r.out, r.err

    def edit(self, rel: str, old: str, new: str) -> None:
        f = self.repo / rel
        text = f.read_text()
        assert old in text, f"{old!r} not in {rel}"
        f.write_text(text.replace(old, new, 1))
        commit_all(self.repo, f"edit {rel}")

    def plan(self, *args: str) -> dict[str, dict[str, Any]]:
        code, out, err = self.cli("plan", "--json", *args)
        assert code == 0, out + err
        (env,) = json.loads(out)["environments"]
        return {c["name"]: c for c in env["changes"]}

    def endpoint(self) -> dict[str, Any]:
        (ep,) = self.together.endpoints("reconciler production/chat")
        return ep

    def sdxl(self) -> dict[str, Any] | None:
        return self.replicate.deployment("acme", "sdxl")

    def writes(self) -> list[tuple[str, str]]:
        return self.together.writes() + self.replicate.writes()


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with FakeTogether(TG_KEY, steps=3) as tg, FakeReplicate(R8_TOKEN) as r8:
        repo = init_repo(tmp_path / "repo")
        write_files(
            repo,
            {
                ".gitignore": ".reconciler/\n",
                "manifests/environments.yaml": ENVIRONMENT,
                "manifests/providers.yaml": PROVIDERS % {"together": tg.url, "replicate": r8.url},
                "manifests/chat.yaml": CHAT,
                "manifests/sdxl.yaml": SDXL,
            },
        )
        commit_all(repo, "two vendors")
        yield World(repo, tg, r8)


def events(err: str, name: str) -> list[dict[str, Any]]:
    """The JSON log lines (stderr is not a terminal) with event `name`."""
    return [
        doc
        for line in err.splitlines()
        if line.startswith("{") and (doc := json.loads(line)).get("event") == name
    ]


def history(w: World) -> list[dict[str, Any]]:
    """The recorded runs, newest first, each with its changes."""
    code, out, _ = w.cli("history", "--json")
    assert code == 0, out
    runs = []
    for row in json.loads(out):
        code, shown, _ = w.cli("show", row["id"], "--json")
        assert code == 0, shown
        runs.append(json.loads(shown))
    return runs


def test_create_reapply_update_drift_and_heal(w: World) -> None:
    assert {n: c["action"] for n, c in w.plan().items()} == {"chat": "create", "sdxl": "create"}
    code, out, err = w.cli("apply")
    assert code == 0, out + err
    ep = w.endpoint()
    assert ep["state"] == "STARTED", "apply waited for the endpoint to start"
    assert ep["inactive_timeout"] == 60
    release = w.sdxl()["current_release"]  # type: ignore[index]
    assert release["version"] == V1 and release["configuration"]["max_instances"] == 3
    for f in (w.repo / ".reconciler").rglob("*"):
        if f.is_file():
            assert not [s for s in SECRETS if s.encode() in f.read_bytes()], f.name

    before = w.writes()
    assert w.plan() == {}
    code, out, err = w.cli("apply")
    assert code == 0, out + err
    assert w.writes() == before, "a re-apply writes nothing"

    w.edit("manifests/chat.yaml", "maxReplicas: 2", "maxReplicas: 4")
    w.edit("manifests/sdxl.yaml", f"version: {V1}", f"version: {V2}")
    assert {n: c["action"] for n, c in w.plan().items()} == {"chat": "update", "sdxl": "update"}
    code, out, err = w.cli("apply")
    assert code == 0, out + err
    assert w.endpoint()["autoscaling"] == {"min_replicas": 1, "max_replicas": 4}
    assert w.sdxl()["current_release"]["version"] == V2  # type: ignore[index]
    assert w.sdxl()["current_release"]["number"] == 2, "one release for one change"  # type: ignore[index]

    w.together.tamper(w.endpoint()["id"], "autoscaling.max_replicas", 9)
    w.replicate.tamper("acme", "sdxl", "hardware", "gpu-a40-large")
    code, out, err = w.cli("drift")
    assert code == 2, out + err
    assert "production: 0 in sync, 2 drifted" in out
    assert "scaling.maxReplicas: recorded 4, live 9" in out
    assert 'scaling.hardware: recorded "gpu-t4", live "gpu-a40-large"' in out
    code, out, err = w.cli("apply", "--heal")
    assert code == 0, out + err
    assert w.cli("drift")[0] == 0
    assert w.endpoint()["autoscaling"]["max_replicas"] == 4
    assert w.sdxl()["current_release"]["configuration"]["hardware"] == "gpu-t4"  # type: ignore[index]
    assert w.together.creates == {"reconciler production/chat": 1}
    assert w.replicate.creates == {"sdxl": 1}


def test_replacements_say_why_and_replicates_waits_for_its_slow_delete(w: World) -> None:
    assert w.cli("apply")[0] == 0
    old_id = w.endpoint()["id"]
    w.edit(
        "manifests/chat.yaml",
        "hardware: 2x_nvidia_h100_80gb_sxm",
        "hardware: 4x_nvidia_h100_80gb_sxm",
    )
    w.edit(
        "manifests/sdxl.yaml", "model: stability-ai/sdxl", "model: meta/meta-llama-3-8b-instruct"
    )
    w.edit("manifests/sdxl.yaml", f"version: {V1}", f"version: {LLAMA_V}")
    changes = w.plan()
    assert changes["chat"]["action"] == "replace"
    assert changes["chat"]["reason"].startswith(
        "scaling.hardware cannot be changed in place on together: a dedicated endpoint keeps "
        "its hardware for life"
    )
    assert changes["sdxl"]["action"] == "replace"
    assert "model cannot be changed in place on replicate" in changes["sdxl"]["reason"]
    assert "15 minutes offline" in changes["sdxl"]["reason"]
    code, out, _ = w.cli("plan")
    assert "-/+ deployment.chat" in out and "-/+ deployment.sdxl" in out

    code, out, err = w.cli("apply")
    assert code == 1, out + err
    tg = [(m, p) for m, p in w.together.writes()]
    assert [m for m, _ in tg[-2:]] == ["DELETE", "POST"]
    assert w.together.endpoint(old_id) is None
    assert w.endpoint()["hardware"] == "4x_nvidia_h100_80gb_sxm"
    assert "deployment.sdxl: failed" in out and "offline and unused for at least 15" in out
    assert w.sdxl()["current_release"]["configuration"]["max_instances"] == 0  # type: ignore[index]

    w.replicate.advance(15 * 60)
    assert w.plan()["sdxl"]["action"] == "replace", "the failed replace is still to do"
    code, out, err = w.cli("apply")
    assert code == 0, out + err
    release = w.sdxl()["current_release"]  # type: ignore[index]
    assert release["model"] == "meta/meta-llama-3-8b-instruct" and release["number"] == 1
    assert w.plan() == {}


def test_failed_readiness_and_a_refused_write_fail_and_are_recorded(w: World) -> None:
    w.together.fail_next_deploy()
    w.edit("manifests/sdxl.yaml", f"version: {V1}", f"version: {LLAMA_V}")
    code, out, err = w.cli("apply")
    assert code == 1, out + err
    assert "deployment.chat: failed: Degraded: ERROR" in out
    assert "deployment.sdxl: failed" in out and "is not a version of stability-ai/sdxl" in out
    (run,) = history(w)
    assert run["outcome"] == "failed"
    outcomes = {c["name"]: c["outcome"] for c in run["changes"]}
    assert outcomes == {"chat": "failed", "sdxl": "failed"}


def test_429s_are_honoured(w: World) -> None:
    w.together.fail_next(
        429, retry_after=1, method="POST", body={"error": {"message": "slow down"}}
    )
    w.together.fail_next(429, retry_after=1, method="GET", path="/v1/endpoints/endpoint-")
    w.replicate.fail_next(
        429, retry_after=1, method="POST", body={"detail": "Request was throttled."}
    )
    code, out, err = w.cli("apply")
    assert code == 0, out + err
    retries = events(err, "http.retry")
    assert sorted(e["request"].split()[0] for e in retries) == ["POST", "POST"]
    assert all(e["wait"] == 1 for e in retries)
    later = events(err, "health.later")
    assert [e["wait"] for e in later] == [1] and "429 to a health poll" in later[0]["reason"]
    assert w.together.creates == {"reconciler production/chat": 1}
    assert w.replicate.creates == {"sdxl": 1}


def test_deletes_wait_for_allow_delete_and_for_replicate(w: World) -> None:
    assert w.cli("apply")[0] == 0
    (w.repo / "manifests/chat.yaml").unlink()
    (w.repo / "manifests/sdxl.yaml").unlink()
    commit_all(w.repo, "retire both")
    changes = w.plan()
    assert "needs --allow-delete" in changes["chat"]["refused"]
    assert "needs --allow-delete" in changes["sdxl"]["refused"]
    code, out, err = w.cli("apply")
    assert code == 3, out + err
    assert w.sdxl() is not None and w.together.endpoints(), "a blocked environment changes nothing"

    changes = w.plan("--allow-delete")
    assert "for good" in changes["chat"]["reason"]
    assert "15 minutes offline and unused" in changes["sdxl"]["reason"]
    code, out, err = w.cli("apply", "--allow-delete")
    assert code == 1, out + err
    assert w.together.endpoints() == []
    assert "Replicate has not deleted acme/sdxl" in out and "apply again to go on" in out
    assert w.sdxl() is not None
    assert list(w.plan("--allow-delete")) == ["sdxl"], "the delete is still to do"

    w.replicate.advance(15 * 60)
    code, out, err = w.cli("apply", "--allow-delete")
    assert code == 0, out + err
    assert w.sdxl() is None and w.plan("--allow-delete") == {}


def test_a_bad_token_fails_without_showing_it(w: World) -> None:
    code, out, err = w.cli(
        "apply", env={"TOGETHER_API_KEY": TG_KEY + "-old", "REPLICATE_API_TOKEN": R8_TOKEN + "-old"}
    )
    assert code == 1
    assert "check the token in TOGETHER_API_KEY" in out and "Invalid API key provided" in out
    assert "check the token in REPLICATE_API_TOKEN" in out
    assert TG_KEY not in out + err and R8_TOKEN not in out + err


def test_plan_time_errors_are_located(w: World) -> None:
    w.together.stop()
    w.replicate.stop()  # nothing is asked of a vendor to validate
    chat = w.repo / "manifests/chat.yaml"
    chat.write_text(chat.read_text().replace("2x_nvidia_h100_80gb_sxm", "h100"))
    sdxl = w.repo / "manifests/sdxl.yaml"
    sdxl.write_text(sdxl.read_text().replace(V1, "latest"))
    commit_all(w.repo, "broken")
    code, out, err = w.cli("validate")
    out += err
    assert code == 1, out
    assert "manifests/chat.yaml:8:" in out and "is not a hardware id such as" in out
    assert "manifests/sdxl.yaml:9:" in out and "is not a version id" in out
