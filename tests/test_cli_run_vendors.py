"""`reconciler run` on the vendor providers that invoke, through the CLI against their
stand-ins: Azure OpenAI's data plane (chat completions) for a deployment applied through
the ARM stand-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import commit_all, init_repo, run_cli, write_files
from fakes.azure_arm import FakeAzure
from fakes.azure_openai_data import FakeAzureOpenAIData
from fakes.hf_endpoints import FakeHuggingFace

SUB = "0b7e3a51-93c4-4e6a-9d7e-5f1d2c3b4a59"
ARM_TOKEN = "eyJ.arm-SECRET-token.x"
API_KEY = "azure-SECRET-api-key-77aa"
ENV = {"AZURE_TOKEN": ARM_TOKEN, "AZURE_OPENAI_KEY": API_KEY}

MANIFESTS = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
spec: {}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: azure}
spec:
  type: azure-openai
  environments: [production]
  config:
    baseUrl: "%(arm)s"
    inferenceUrl: "%(data)s"
    subscriptionId: %(sub)s
    resourceGroup: ai-prod
    account: acme-openai
    timeoutSeconds: 5
    pollIntervalSeconds: 0.05
  credentials: {tokenEnv: AZURE_TOKEN, apiKeyEnv: AZURE_OPENAI_KEY}
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat-gpt-4o}
spec:
  environments: [production]
  provider: azure
  model: gpt-4o
  scaling: {maxReplicas: 50, hardware: GlobalStandard}
  azure: {modelVersion: "2024-08-06", versionUpgradeOption: NoAutoUpgrade}
  pricing: {inputPerMillionTokens: 2.5, outputPerMillionTokens: 10}
"""


@pytest.fixture
def azure(tmp_path: Path) -> Iterator[tuple[Path, FakeAzure, FakeAzureOpenAIData]]:
    with FakeAzure(ARM_TOKEN, operation_polls=1, retry_after="0.05") as arm:
        account = arm.add_account(SUB, "ai-prod", "acme-openai")
        with FakeAzureOpenAIData(arm, account, API_KEY) as data:
            repo = init_repo(tmp_path / "repo")
            write_files(repo, {
                ".gitignore": ".reconciler/\n",
                "manifests/all.yaml": MANIFESTS % {"arm": arm.url, "data": data.url, "sub": SUB},
            })  # fmt: skip
            commit_all(repo, "azure")
            yield repo, arm, data


def cli(repo: Path, *args: str) -> tuple[int, str, str]:
    r = run_cli(["--repo", str(repo), *args], env=ENV)
    assert "Traceback" not in r.err
    assert ARM_TOKEN not in r.out + r.err and API_KEY not in r.out + r.err
    return r.code, r.out, r.err


def test_azure_run_calls_chat_completions(
    azure: tuple[Path, FakeAzure, FakeAzureOpenAIData],
) -> None:
    repo, _, data = azure
    code, out, err = cli(repo, "apply")
    assert code == 0, out + err
    chat = '{"messages": [{"role": "user", "content": "hi there"}]}'
    code, out, err = cli(
        repo, "run", "chat-gpt-4o", "--env", "production", "--json", "--input", chat
    )
    assert code == 0, err
    ex = json.loads(out)
    assert ex["result"] == "echo: hi there"
    assert ex["usage"] == {"input_tokens": 2, "output_tokens": 3}
    assert ex["cost"] == pytest.approx(2 * 2.5e-6 + 3 * 10e-6)
    (req,) = [r for r in data.requests if r.path.endswith("/chat/completions")]
    assert req.path == "/openai/deployments/chat-gpt-4o/chat/completions"
    assert req.query["api-version"] == "2024-10-21"
    assert req.body == {"messages": [{"role": "user", "content": "hi there"}]}


def test_azure_run_of_a_deployment_gone_fails_recorded(
    azure: tuple[Path, FakeAzure, FakeAzureOpenAIData],
) -> None:
    repo, arm, data = azure
    code, out, err = cli(repo, "apply")
    assert code == 0, out + err
    data.reply = f"the key is {API_KEY}"
    code, out, _ = cli(repo, "run", "chat-gpt-4o", "--env", "production", "--json")
    assert code == 0 and API_KEY not in out  # a secret in the model's answer is masked
    arm.tamper(arm.add_account(SUB, "ai-prod", "acme-openai"), "chat-gpt-4o",
               "properties.provisioningState", "Failed")  # fmt: skip
    code, out, _ = cli(repo, "run", "chat-gpt-4o", "--env", "production")
    assert code == 1 and "404" in out and "deployment for this resource does not exist" in out


HF_TOKEN = "hf_SECRET0123456789abcdefgh"
HF_MANIFESTS = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
spec: {}
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
metadata: {name: llama}
spec:
  environments: [production]
  provider: hf
  model: meta-llama/Llama-3.1-8B-Instruct
  scaling: {minReplicas: 1, maxReplicas: 1, hardware: nvidia-a10g}
  huggingface: {task: text-generation}
"""


def test_huggingface_run_calls_the_endpoint_url(tmp_path: Path) -> None:
    with FakeHuggingFace(HF_TOKEN, steps=1) as hf:
        hf.serve_inference = True
        repo = init_repo(tmp_path / "repo")
        write_files(repo, {".gitignore": ".reconciler/\n",
                           "manifests/all.yaml": HF_MANIFESTS % {"hf": hf.url}})  # fmt: skip
        commit_all(repo, "hf")
        env = {"HF_TOKEN": HF_TOKEN}
        r = run_cli(["--repo", str(repo), "apply"], env=env)
        assert r.code == 0, r.out + r.err
        r = run_cli(["--repo", str(repo), "run", "llama", "--env", "production", "--json",
                     "--input", '{"question": "why?"}'], env=env)  # fmt: skip
        assert r.code == 0, r.err
        ex = json.loads(r.out)
        assert ex["result"] == 'echo: {"question": "why?"}'
        assert ex["usage"] == {"input_tokens": None, "output_tokens": 3}
        assert ex["cost"] is None  # no price declared: unknown
        chat = '{"messages": [{"role": "user", "content": "hello"}]}'
        r = run_cli(["--repo", str(repo), "run", "llama", "--env", "production", "--json",
                     "--input", chat], env=env)  # fmt: skip
        assert r.code == 0 and json.loads(r.out)["usage"] == {"input_tokens": 1, "output_tokens": 2}
        paths = [q.path for q in hf.requests if q.path.startswith("/inference/")]
        assert paths == ["/inference/llama", "/inference/llama/v1/chat/completions"]
        assert HF_TOKEN not in r.out + r.err


def test_suspending_where_the_vendor_cannot_is_refused_at_validate(
    azure: tuple[Path, FakeAzure, FakeAzureOpenAIData],
) -> None:
    repo = azure[0]
    path = repo / "manifests" / "all.yaml"
    path.write_text(
        path.read_text().replace("  provider: azure\n", "  provider: azure\n  suspended: true\n")
    )
    commit_all(repo, "suspend")
    code, _, err = cli(repo, "validate")
    assert code == 1
    assert (
        "manifests/all.yaml:" in err
        and "cannot suspend a deployment: Azure OpenAI has no pause" in err
    )
