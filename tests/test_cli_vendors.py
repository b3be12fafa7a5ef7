"""The three vendor providers through the CLI (real processes) against their stand-ins on
127.0.0.1: create, update, replace (and why), drift and heal, delete (refused or
qualified, as the plan says), and located plan-time errors. No token, key or secret
value in any output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import commit_all, init_repo, run_cli, write_files
from fakes.azure_arm import FakeAzure
from fakes.hf_endpoints import FakeHuggingFace
from fakes.langfuse import FakeLangfuse

SUB = "0b7e3a51-93c4-4e6a-9d7e-5f1d2c3b4a59"
LF_PUBLIC, LF_SECRET = "pk-lf-0a1b2c", "sk-lf-SECRET-3d4e5f"
ARM_TOKEN = "eyJ.arm-SECRET-token.x"
HF_TOKEN = "hf_SECRET0123456789abcdefgh"
VENDOR_KEY = "vendor-SECRET-value-0042"
ENV = {
    "LANGFUSE_PUBLIC_KEY": LF_PUBLIC,
    "LANGFUSE_SECRET_KEY": LF_SECRET,
    "AZURE_TOKEN": ARM_TOKEN,
    "HF_TOKEN": HF_TOKEN,
    "VENDOR_KEY": VENDOR_KEY,
}
SECRETS = (LF_SECRET, ARM_TOKEN, HF_TOKEN, VENDOR_KEY)

ENVIRONMENT = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
spec: {description: customer-facing}
"""

PROVIDERS = """apiVersion: reconciler/v1
kind: Provider
metadata: {name: prompts}
spec:
  type: langfuse
  environments: [production]
  config: {host: "%(langfuse)s", timeoutSeconds: 5}
  credentials: {publicKeyEnv: LANGFUSE_PUBLIC_KEY, secretKeyEnv: LANGFUSE_SECRET_KEY}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: azure}
spec:
  type: azure-openai
  environments: [production]
  config:
    baseUrl: "%(azure)s"
    subscriptionId: %(sub)s
    resourceGroup: ai-prod
    account: acme-openai
    timeoutSeconds: 5
    pollIntervalSeconds: 0.05
  credentials: {tokenEnv: AZURE_TOKEN}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: hf}
spec:
  type: huggingface
  environments: [production]
  config: {baseUrl: "%(hf)s", namespace: acme, timeoutSeconds: 5, pollIntervalSeconds: 0.05}
  credentials: {tokenEnv: HF_TOKEN}
"""

PROMPT = """apiVersion: reconciler/v1
kind: Prompt
metadata: {name: support}
spec:
  versions:
    - {version: 1.0.0, template: "You are a support agent for {{product}}."}
    - {version: 1.1.0, template: "You are a support agent for {{product}}. Be brief."}
"""

CHAT = """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: support-chat}
spec:
  environments: [production]
  provider: prompts
  model: gpt-4o
  prompt: support@1.0.0
  options: {temperature: 0.2, maxTokens: 400}
  langfuse: {promptName: support/agent}
"""

GPT = """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat-gpt-4o}
spec:
  environments: [production]
  provider: azure
  model: gpt-4o
  scaling: {maxReplicas: 50, hardware: GlobalStandard}
  azure: {modelVersion: "2024-08-06", versionUpgradeOption: NoAutoUpgrade}
  risk: high
"""

RERANKER = """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: reranker}
spec:
  environments: [production]
  provider: hf
  model: BAAI/bge-reranker-v2-m3
  scaling: {minReplicas: 1, maxReplicas: 4, hardware: nvidia-a10g}
  env: {LOG_LEVEL: info, VENDOR_KEY: {secretEnv: VENDOR_KEY}}
  huggingface: {task: sentence-ranking}
"""


@dataclass
class World:
    repo: Path
    langfuse: FakeLangfuse
    azure: FakeAzure
    hf: FakeHuggingFace
    account: str

    def cli(self, *args: str) -> tuple[int, str]:
        r = run_cli(["--repo", str(self.repo), *args], env=ENV)
        out = r.out + r.err
        assert not [s for s in SECRETS if s in out], "a secret leaked into the output"
        assert "Traceback" not in out, out
        return r.code, out

    def edit(self, rel: str, old: str, new: str, message: str = "edit") -> None:
        f = self.repo / rel
        text = f.read_text()
        assert old in text, f"{old!r} not in {rel}"
        f.write_text(text.replace(old, new, 1))
        commit_all(self.repo, message)

    def plan(self) -> dict[str, dict[str, object]]:
        code, out = self.cli("plan", "--json")
        assert code == 0, out
        (env,) = json.loads(out[out.index("{") :])["environments"]
        return {c["name"]: c for c in env["changes"]}


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with (
        FakeLangfuse(LF_PUBLIC, LF_SECRET) as lf,
        FakeAzure(ARM_TOKEN, operation_polls=1, retry_after="0.05") as az,
        FakeHuggingFace(HF_TOKEN, steps=2) as hf,
    ):
        account = az.add_account(SUB, "ai-prod", "acme-openai")
        repo = init_repo(tmp_path / "repo")
        write_files(
            repo,
            {
                ".gitignore": ".reconciler/\n",
                "manifests/environments.yaml": ENVIRONMENT,
                "manifests/providers.yaml": PROVIDERS
                % {"langfuse": lf.url, "azure": az.url, "hf": hf.url, "sub": SUB},
                "manifests/prompts.yaml": PROMPT,
                "manifests/support-chat.yaml": CHAT,
                "manifests/gpt.yaml": GPT,
                "manifests/reranker.yaml": RERANKER,
            },
        )
        commit_all(repo, "vendors")
        yield World(repo, lf, az, hf, account)


def test_create_update_drift_and_heal(w: World) -> None:
    assert {n: c["action"] for n, c in w.plan().items()} == {
        "chat-gpt-4o": "create",
        "reranker": "create",
        "support-chat": "create",
    }
    code, out = w.cli("apply")
    assert code == 0, out
    assert w.langfuse.prompt("support/agent", label="production")["config"] == {  # type: ignore[index]
        "model": "gpt-4o",
        "temperature": 0.2,
        "max_tokens": 400,
    }
    gpt = w.azure.deployment(w.account, "chat-gpt-4o")
    assert gpt is not None and gpt["sku"] == {"name": "GlobalStandard", "capacity": 50}
    ep = w.hf.endpoint("acme", "reranker")
    assert ep is not None and ep["model"]["secrets"] == {"VENDOR_KEY": VENDOR_KEY}
    assert w.plan() == {}, "applied: nothing left to do"
    assert w.cli("drift")[0] == 0
    for f in (w.repo / ".reconciler").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not [x for x in SECRETS if x.encode() in data], f"a secret is in {f.name}"

    w.edit("manifests/support-chat.yaml", "support@1.0.0", "support@1.1.0")
    w.edit("manifests/gpt.yaml", "maxReplicas: 50", "maxReplicas: 80")
    w.edit("manifests/reranker.yaml", "maxReplicas: 4", "maxReplicas: 6")
    assert {n: c["action"] for n, c in w.plan().items()} == dict.fromkeys(
        ("chat-gpt-4o", "reranker", "support-chat"), "update"
    )
    code, out = w.cli("apply")
    assert code == 0, out
    labelled = w.langfuse.prompt("support/agent", label="production")
    assert labelled is not None and labelled["prompt"].endswith("Be brief.")
    assert w.azure.deployment(w.account, "chat-gpt-4o")["sku"]["capacity"] == 80  # type: ignore[index]
    assert w.hf.endpoint("acme", "reranker")["compute"]["scaling"]["maxReplica"] == 6  # type: ignore[index]

    w.langfuse.move_label("support/agent", "production", 1)  # back, in the UI
    w.azure.tamper(w.account, "chat-gpt-4o", "sku.capacity", 10)
    w.hf.tamper("acme", "reranker", "model.env", {"LOG_LEVEL": "debug"})
    code, out = w.cli("drift")
    assert code == 2, out
    assert "production: 0 in sync, 3 drifted" in out
    assert (
        'prompt.template: recorded "You are a support agent for {{product}}. Be brief.", '
        'live "You are a support agent for {{product}}."' in out
    )
    assert "scaling.maxReplicas: recorded 80, live 10" in out
    assert 'env.LOG_LEVEL: recorded "info", live "debug"' in out
    code, out = w.cli("apply", "--heal")
    assert code == 0, out
    assert w.cli("drift")[0] == 0
    assert w.langfuse.posts == {"support/agent": 2}, "healing moved the label back, no new version"


def test_replace_says_why_and_deletes_before_creating(w: World) -> None:
    assert w.cli("apply")[0] == 0
    w.edit("manifests/gpt.yaml", "model: gpt-4o", "model: gpt-4o-mini")
    change = w.plan()["chat-gpt-4o"]
    assert change["action"] == "replace"
    assert change["reason"] == (
        "model cannot be changed in place on azure: Azure OpenAI keeps a deployment's model "
        "for life (only azure.modelVersion changes in place)"
    )
    code, out = w.cli("plan")
    assert "-/+ deployment.chat-gpt-4o" in out and "keeps a deployment's model" in out
    code, out = w.cli("apply")
    assert code == 0, out
    writes = [m for m, p in w.azure.writes() if "/deployments/chat-gpt-4o" in p]
    assert writes[-2:] == ["DELETE", "PUT"]
    gpt = w.azure.deployment(w.account, "chat-gpt-4o")
    assert gpt is not None and gpt["properties"]["model"]["name"] == "gpt-4o-mini"


def test_deletes_as_each_vendor_allows_them(w: World) -> None:
    assert w.cli("apply")[0] == 0
    (w.repo / "manifests/reranker.yaml").unlink()
    (w.repo / "manifests/support-chat.yaml").unlink()
    commit_all(w.repo, "retire two")
    changes = w.plan()
    assert changes["reranker"]["action"] == "delete" and changes["reranker"]["refused"] is None
    assert "for good" in str(changes["reranker"]["reason"])
    assert "cannot take label 'production' off prompt 'support/agent'" in str(
        changes["support-chat"]["refused"]
    )
    code, out = w.cli("apply")
    assert code == 3 and "cannot take label" in out, out
    assert w.hf.endpoint("acme", "reranker") is not None, "a blocked environment changes nothing"
    w.edit(
        "manifests/providers.yaml",
        "config: {host:",
        "config: {onDelete: delete-version, host:",
        "let deletes delete the labelled version",
    )
    changes = w.plan()
    assert changes["support-chat"]["refused"] is None
    assert "deletes the version" in str(changes["support-chat"]["reason"])
    code, out = w.cli("apply")
    assert code == 0, out
    assert w.hf.endpoint("acme", "reranker") is None
    assert w.langfuse.versions("support/agent") == []


def test_a_langfuse_rename_is_a_replace_refused_like_its_delete(w: World) -> None:
    assert w.cli("apply")[0] == 0
    w.edit("manifests/support-chat.yaml", "promptName: support/agent", "promptName: support/bot")
    change = w.plan()["support-chat"]
    assert change["action"] == "replace"
    assert "langfuse.promptName cannot be changed in place on prompts" in str(change["reason"])
    assert "replacing deletes the old object on prompts, which is refused" in str(change["refused"])
    assert w.cli("apply")[0] == 3


def test_the_plan_says_which_langfuse_label_a_deployment_gets_and_why(w: World) -> None:
    change = w.plan()["support-chat"]
    assert change["reason"] == (
        "Langfuse prompt 'support/agent', label 'production' (the environment's name, by "
        "default; what Langfuse's SDKs fetch unasked)"
    )
    assert "reason" not in w.plan()["reranker"] or w.plan()["reranker"]["reason"] is None
    w.edit(
        "manifests/support-chat.yaml",
        "promptName: support/agent",
        "promptName: support/agent, label: canary",
    )
    code, out = w.cli("plan")
    assert code == 0, out
    assert "# Langfuse prompt 'support/agent', label 'canary' (langfuse.label)" in out


def test_plan_time_errors_are_located_and_need_no_network(w: World) -> None:
    w.langfuse.stop()  # nothing is asked of a vendor to validate
    providers = w.repo / "manifests/providers.yaml"
    text = providers.read_text()
    text = text.replace("account: acme-openai", "account: acme openai")
    text = text.replace("namespace: acme,", "namespce: acme,")
    providers.write_text(text)
    gpt = w.repo / "manifests/gpt.yaml"
    gpt.write_text(gpt.read_text().replace("hardware: GlobalStandard", "hardware: globalstandard"))
    commit_all(w.repo, "broken")
    code, out = w.cli("validate")
    assert code == 1, out
    lines = out.splitlines()

    def at(path: str, needle: str) -> str:
        found = [ln for ln in lines if ln.startswith(path + ":") and needle in ln]
        assert found, f"no {needle!r} at {path} in:\n{out}"
        return found[0]

    line = providers.read_text().splitlines()
    account_line = next(i for i, t in enumerate(line, 1) if "account: acme openai" in t)
    assert at("manifests/providers.yaml", "config.account").startswith(
        f"manifests/providers.yaml:{account_line}:14:"
    )
    assert at("manifests/providers.yaml", "unknown config key 'namespce'")
    assert at("manifests/gpt.yaml", "did you mean 'GlobalStandard'").startswith(
        "manifests/gpt.yaml:8:"
    )
    assert w.cli("plan")[0] == 1


def test_a_block_for_another_provider_type_is_an_error_at_the_block(w: World) -> None:
    chat = w.repo / "manifests/support-chat.yaml"
    chat.write_text(chat.read_text() + "  huggingface: {task: text-generation}\n")
    commit_all(w.repo, "wrong block")
    code, out = w.cli("validate")
    assert code == 1
    assert (
        "manifests/support-chat.yaml:11:16: a `huggingface` block is for a provider of type "
        "'huggingface'; provider 'prompts' is of type 'langfuse'" in out
    )
    chat.write_text(chat.read_text().replace("{task: text-generation}", "{tsak: x}"))
    commit_all(w.repo, "unknown field in a block")
    code, out = w.cli("validate")
    assert code == 1 and "unknown field 'tsak'" in out and "did you mean 'task'" in out


def test_two_environments_cannot_share_one_vendor_object(w: World) -> None:
    envs = w.repo / "manifests/environments.yaml"
    envs.write_text(ENVIRONMENT.replace("production", "staging") + "---\n" + ENVIRONMENT)
    for rel in ("manifests/providers.yaml", "manifests/gpt.yaml"):
        f = w.repo / rel
        f.write_text(
            f.read_text().replace(
                "environments: [production]", "environments: [staging, production]"
            )
        )
    commit_all(w.repo, "staging shares production's account")
    code, out = w.cli("validate")
    assert code == 1
    assert "deployment.chat-gpt-4o would be the same azure-openai object" in out
    assert "manifests/gpt.yaml:" in out
    w.edit(
        "manifests/gpt.yaml",
        "  risk: high\n",
        "  risk: high\n  overrides:\n    staging: {azure: {deploymentName: chat-gpt-4o-staging}}\n",
    )
    assert w.cli("validate")[0] == 0


def test_a_problem_is_reported_where_its_value_was_written(w: World) -> None:
    """A value from an environment's override is reported at the override."""
    w.edit(
        "manifests/providers.yaml",
        "  credentials: {tokenEnv: AZURE_TOKEN}\n",
        "  credentials: {tokenEnv: AZURE_TOKEN}\n"
        '  overrides:\n    production: {config: {resourceGroup: "ai prod!"}}\n',
    )
    w.edit(
        "manifests/reranker.yaml",
        "  huggingface: {task: sentence-ranking}\n",
        "  huggingface: {task: sentence-ranking}\n"
        "  overrides:\n    production: {huggingface: {instanceSize: large}}\n",
    )
    code, out = w.cli("validate")
    assert code == 1
    providers = (w.repo / "manifests/providers.yaml").read_text().splitlines()
    line = next(i for i, t in enumerate(providers, 1) if "ai prod!" in t)
    assert f"manifests/providers.yaml:{line}:42: production: provider 'azure': " in out
    assert "config.resourceGroup 'ai prod!' is not valid" in out
    assert "manifests/reranker.yaml:12:46: production: huggingface.instanceSize 'large'" in out
