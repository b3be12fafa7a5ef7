"""Running and suspending the vendor deployments through the CLI (real processes) against
their stand-ins on 127.0.0.1: `reconciler run` on Together (chat completions on the
dedicated endpoint), Replicate (a prediction on the deployment) and Predibase (its
OpenAI-compatible chat); a failing run exits 1 and is recorded failed; `suspended: true`
applied stops Together, Replicate and Hugging Face deployments at the vendor, `status`
says Suspended, `run` refuses, a resume by hand is drift, and lifting it resumes them;
Predibase refuses it at validate. No key or token in any output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import commit_all, init_repo, run_cli, write_files
from fakes.hf_endpoints import FakeHuggingFace
from fakes.predibase import FakePredibase
from fakes.replicate import MODELS, FakeReplicate
from fakes.together import FakeTogether

TG_KEY = "tg_SECRET0123456789abcdefgh"
R8_TOKEN = "r8_SECRET0123456789abcdefgh"
PB_TOKEN = "pb_SECRET0123456789abcdefgh"
HF_TOKEN = "hf_SECRET0123456789abcdefgh"
ENV = {
    "TOGETHER_API_KEY": TG_KEY,
    "REPLICATE_API_TOKEN": R8_TOKEN,
    "PREDIBASE_API_TOKEN": PB_TOKEN,
    "HF_TOKEN": HF_TOKEN,
}
LLAMA_V = MODELS["meta/meta-llama-3-8b-instruct"][0]

MANIFESTS = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
spec: {}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: together}
spec:
  type: together
  environments: [production]
  config: {baseUrl: "%(tg)s", timeoutSeconds: 5, pollIntervalSeconds: 0.05}
  credentials: {tokenEnv: TOGETHER_API_KEY}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: replicate}
spec:
  type: replicate
  environments: [production]
  config: {baseUrl: "%(r8)s", owner: acme, timeoutSeconds: 5, pollIntervalSeconds: 0.05}
  credentials: {tokenEnv: REPLICATE_API_TOKEN}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: pb}
spec:
  type: predibase
  environments: [production]
  config:
    baseUrl: "%(pb)s"
    servingUrl: "%(pb)s"
    tenant: %(tenant)s
    timeoutSeconds: 5
    pollIntervalSeconds: 0.05
  credentials: {tokenEnv: PREDIBASE_API_TOKEN}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: hf}
spec:
  type: huggingface
  environments: [production]
  config: {baseUrl: "%(hf)s", namespace: acme, timeoutSeconds: 5, pollIntervalSeconds: 0.05}
  credentials: {tokenEnv: HF_TOKEN}
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat}
spec:
  environments: [production]
  provider: together
  model: meta-llama/Llama-3.3-70B-Instruct-Turbo
  scaling: {minReplicas: 1, maxReplicas: 2, hardware: 2x_nvidia_h100_80gb_sxm}
  pricing: {inputPerMillionTokens: 0.88, outputPerMillionTokens: 0.88}
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: llama}
spec:
  environments: [production]
  provider: replicate
  model: meta/meta-llama-3-8b-instruct
  scaling: {minReplicas: 1, maxReplicas: 3, hardware: gpu-l40s}
  replicate: {version: %(llama_v)s}
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: support}
spec:
  environments: [production]
  provider: pb
  model: qwen3-8b
  scaling: {minReplicas: 0, maxReplicas: 1, hardware: a100_80gb_100}
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: reranker}
spec:
  environments: [production]
  provider: hf
  model: meta-llama/Llama-3.1-8B-Instruct
  scaling: {minReplicas: 1, maxReplicas: 1, hardware: nvidia-a10g}
"""
PATH = "manifests/all.yaml"


@dataclass
class World:
    repo: Path
    tg: FakeTogether
    r8: FakeReplicate
    pb: FakePredibase
    hf: FakeHuggingFace

    def cli(self, *args: str) -> tuple[int, str, str]:
        r = run_cli(["--repo", str(self.repo), *args], env=ENV)
        both = r.out + r.err
        assert not [s for s in ENV.values() if s in both], "a secret leaked into the output"
        assert "Traceback" not in both, both
        return r.code, r.out, r.err

    def json(self, *args: str) -> Any:
        code, out, err = self.cli(*args, "--json")
        assert code in (0, 2), out + err
        return json.loads(out)

    def run(self, deployment: str, data: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
        code, out, err = self.cli(
            "run", deployment, "--env", "production", "--json", "--input", json.dumps(data)
        )
        return code, (json.loads(out) if out.strip() else {}), err

    def edit(self, old: str, new: str) -> None:
        f = self.repo / PATH
        text = f.read_text()
        assert old in text, old
        f.write_text(text.replace(old, new, 1))
        commit_all(self.repo, "edit")

    def endpoint(self) -> dict[str, Any]:
        (ep,) = self.tg.endpoints("reconciler production/chat")
        return ep

    def instances(self) -> tuple[int, int]:
        config = self.r8.deployment("acme", "llama")["current_release"]["configuration"]  # type: ignore[index]
        return config["min_instances"], config["max_instances"]

    def hf_state(self) -> str:
        return str(self.hf.endpoint("acme", "reranker")["status"]["state"])  # type: ignore[index]


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with (
        FakeTogether(TG_KEY, steps=2) as tg,
        FakeReplicate(R8_TOKEN) as r8,
        FakePredibase(PB_TOKEN, steps=2) as pb,
        FakeHuggingFace(HF_TOKEN, steps=1) as hf,
    ):
        repo = init_repo(tmp_path / "repo")
        text = MANIFESTS % {
            "tg": tg.url,
            "r8": r8.url,
            "pb": pb.url,
            "tenant": pb.tenant,
            "hf": hf.url,
            "llama_v": LLAMA_V,
        }
        write_files(repo, {".gitignore": ".reconciler/\n", PATH: text})
        commit_all(repo, "four vendors")
        world = World(repo, tg, r8, pb, hf)
        code, out, err = world.cli("apply")
        assert code == 0, out + err
        yield world


def test_a_run_on_each_vendor_that_invokes(w: World) -> None:
    code, ex, err = w.run("chat", {"messages": [{"role": "user", "content": "hello there"}]})
    assert code == 0, err
    assert (ex["status"], ex["result"]) == ("completed", "echo: hello there")
    assert ex["usage"] == {"input_tokens": 2, "output_tokens": 3}
    assert ex["cost"] == pytest.approx(5 * 0.88e-6)
    (req,) = [r for r in w.tg.requests if r.path == "/v1/chat/completions"]
    assert req.body["model"] == w.endpoint()["name"]

    code, ex, err = w.run("llama", {"prompt": "why is the sky blue"})
    assert code == 0, err
    assert json.loads(ex["result"]) == ["echo:", " why", " is", " the", " sky", " blue"]
    assert ex["usage"] == {"input_tokens": 5, "output_tokens": 6}
    assert ex["cost"] is None  # no price declared: unknown, never 0
    (post,) = [r for r in w.r8.requests if r.path.endswith("/predictions")]
    assert post.path == "/v1/deployments/acme/llama/predictions"
    assert post.headers["prefer"] == "wait=4"

    w.r8.prediction_steps = 2  # longer than the wait: polled at urls.get
    code, ex, err = w.run("llama", {"prompt": "and the sea"})
    assert code == 0, err
    assert ex["usage"] == {"input_tokens": 3, "output_tokens": 4}
    assert len([r for r in w.r8.requests if r.path == "/v1/predictions/pred000002"]) == 2

    code, ex, err = w.run("support", {"ticket": "late"})
    assert code == 0, err
    assert ex["result"] == 'echo: {"ticket": "late"}' and ex["usage"]["output_tokens"] == 3
    (req,) = [r for r in w.pb.requests if r.path.endswith("/chat/completions")]
    assert req.path == f"/{w.pb.tenant}/deployments/v2/llms/support/v1/chat/completions"

    runs = w.json("executions")
    assert sorted((e["deployment"], e["status"]) for e in runs) == [
        ("chat", "completed"),
        ("llama", "completed"),
        ("llama", "completed"),
        ("support", "completed"),
    ]


def test_a_failing_run_exits_1_and_is_recorded_failed(w: World) -> None:
    w.tg.fail_next(503, body={"error": {"message": "endpoint overloaded"}}, path="/v1/chat")
    code, out, err = w.cli("run", "chat", "--env", "production", "--input", '{"q": "x"}')
    assert code == 1 and "endpoint overloaded" in out + err
    assert len([r for r in w.tg.requests if r.path == "/v1/chat/completions"]) == 1  # once

    w.r8.fail_next_prediction("CUDA out of memory")
    code, out, err = w.cli("run", "llama", "--env", "production", "--input", '{"prompt": "x"}')
    assert code == 1 and "failed: CUDA out of memory" in out + err

    w.r8.reply = f"the token is {R8_TOKEN}"  # a secret echoed by the model is masked
    code, ex, err = w.run("llama", {"prompt": "tell me a secret"})
    assert code == 0, err
    assert R8_TOKEN not in json.dumps(ex)

    failed = [e for e in w.json("executions", "--status", "failed")]
    assert sorted(e["deployment"] for e in failed) == ["chat", "llama"]
    assert any("CUDA out of memory" in (e["error"] or "") for e in failed)


def test_suspend_then_resume_through_apply(w: World) -> None:
    for provider in ("together", "replicate", "hf"):  # chat, llama, reranker
        w.edit(f"  provider: {provider}\n", f"  provider: {provider}\n  suspended: true\n")
    code, out, err = w.cli("apply")
    assert code == 0, out + err
    assert w.endpoint()["state"] == "STOPPED"
    assert w.instances() == (0, 0)
    assert w.hf_state() == "paused"
    health = {row["name"]: row["health"] for row in w.json("status")}
    assert health == {
        "chat": "Suspended",
        "llama": "Suspended",
        "support": "Healthy",
        "reranker": "Suspended",
    }
    assert w.cli("drift")[0] == 0
    code, _, err = w.cli("run", "chat", "--env", "production")
    assert code == 1 and "deployment.chat is suspended in 'production'" in err

    w.tg.tamper(w.endpoint()["id"], "state", "STARTED")  # started again in the UI
    code, out, _ = w.cli("drift")
    assert code == 2 and "suspended: recorded true, live false" in out

    for provider in ("together", "replicate", "hf"):
        w.edit(f"  provider: {provider}\n  suspended: true\n", f"  provider: {provider}\n")
    w.tg.tamper(w.endpoint()["id"], "state", "STOPPED")
    code, out, err = w.cli("apply")
    assert code == 0, out + err
    assert w.endpoint()["state"] == "STARTED"
    assert w.instances() == (1, 3)
    assert w.hf_state() == "running"
    assert {row["health"] for row in w.json("status")} == {"Healthy"}
    code, ex, err = w.run("chat", {"q": "back"})
    assert code == 0 and ex["status"] == "completed", err


def test_suspending_a_predibase_deployment_is_refused_at_validate(w: World) -> None:
    w.edit("  provider: pb\n", "  provider: pb\n  suspended: true\n")
    code, _, err = w.cli("validate")
    assert code == 1
    assert f"{PATH}:" in err and "cannot suspend a deployment" in err
    assert "Predibase's API has no way to stop a deployment" in err
