"""Every built-in provider keeps the contract (reconciler/providers/conformance.py), each
against its own store or stand-in; a broken provider is caught."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from fakes.azure_arm import FakeAzure
from fakes.deploy_api import FakeDeployApi
from fakes.hf_endpoints import FakeHuggingFace
from fakes.langfuse import FakeLangfuse
from fakes.predibase import FakePredibase

from reconciler.instances import Instance, ProviderConfig
from reconciler.providers.azure_openai import AzureOpenAIProvider
from reconciler.providers.base import LiveObject, Provider
from reconciler.providers.conformance import ContractError, check_provider
from reconciler.providers.http import HttpProvider
from reconciler.providers.huggingface import HuggingFaceProvider
from reconciler.providers.langfuse import LangfuseProvider
from reconciler.providers.local import LocalProvider
from reconciler.providers.predibase import PredibaseProvider

SUB = "0b7e3a51-93c4-4e6a-9d7e-5f1d2c3b4a59"


def pair(provider: str, first: dict[str, Any], second: dict[str, Any]) -> tuple[Instance, ...]:
    base = {"provider": provider, "env": {}, "enabled": True, "risk": "low"}
    return tuple(
        Instance("production", "Deployment", "conformance", provider, {**base, **spec})
        for spec in (first, second)
    )


def settled(p: Provider, ident: str) -> None:
    for _ in range(20):
        if p.status("Deployment", "conformance", "production", ident).health != "Progressing":
            return
    raise AssertionError("still Progressing after 20 polls")


def test_local(tmp_path: Path) -> None:
    first, second = pair(
        "local",
        {"model": "gpt-4o", "scaling": {"minReplicas": 1, "maxReplicas": 1, "hardware": "cpu"}},
        {"model": "gpt-4o", "scaling": {"minReplicas": 1, "maxReplicas": 3, "hardware": "cpu"}},
    )
    config = ProviderConfig("local", "local", "production")
    check_provider(
        lambda: LocalProvider(config, repo_root=tmp_path, env={}),
        first,
        second,
        invoke_input={"question": "hello?"},
    )


def test_http() -> None:
    first, second = pair("api", {"model": "gpt-4o"}, {"model": "gpt-4o-mini"})
    with FakeDeployApi(token="t0ken") as api:
        config = ProviderConfig(
            "api", "http", "production", {"baseUrl": api.url}, {"tokenEnv": "T"}
        )
        check_provider(
            lambda: HttpProvider(config, repo_root=Path("."), env={"T": "t0ken"}),
            first,
            second,
            invoke_input={"question": "hello?"},
        )
        assert api.runs == [("production", "conformance", {"question": "hello?"})]


def test_langfuse() -> None:
    prompt = {"name": "support", "version": "1.0.0", "template": "Hello {{name}}."}
    first, second = pair(
        "prompts",
        {"model": "gpt-4o", "prompt": prompt, "options": {"temperature": 0.2}},
        {"model": "gpt-4o", "prompt": prompt, "options": {"temperature": 0.4}},
    )
    with FakeLangfuse("pk", "sk") as lf:
        config = ProviderConfig(
            "prompts",
            "langfuse",
            "production",
            {"host": lf.url, "onDelete": "delete-version"},
            {"publicKeyEnv": "P", "secretKeyEnv": "S"},
        )
        env = {"P": "pk", "S": "sk"}
        check_provider(  # langfuse cannot invoke: the check expects CannotInvoke
            lambda: LangfuseProvider(config, repo_root=Path("."), env=env),
            first,
            second,
            invoke_input={"name": "Ada"},
        )


def test_azure_openai() -> None:
    first, second = pair(
        "azure",
        {
            "model": "gpt-4o",
            "scaling": {"minReplicas": 1, "maxReplicas": 10, "hardware": "Standard"},
        },
        {
            "model": "gpt-4o",
            "scaling": {"minReplicas": 1, "maxReplicas": 20, "hardware": "Standard"},
        },
    )
    with FakeAzure("tok", retry_after="0") as az:
        az.add_account(SUB, "rg", "acme")
        cfg = {"baseUrl": az.url, "subscriptionId": SUB, "resourceGroup": "rg", "account": "acme"}
        config = ProviderConfig("azure", "azure-openai", "production", cfg, {"tokenEnv": "T"})
        check_provider(
            lambda: AzureOpenAIProvider(config, repo_root=Path("."), env={"T": "tok"}),
            first,
            second,
        )


def test_huggingface() -> None:
    scaling = {"minReplicas": 1, "maxReplicas": 1, "hardware": "nvidia-l4"}
    first, second = pair(
        "hf",
        {"model": "BAAI/bge-reranker-v2-m3", "scaling": scaling},
        {"model": "BAAI/bge-reranker-v2-m3", "scaling": {**scaling, "maxReplicas": 2}},
    )
    with FakeHuggingFace("hf_tok", steps=2) as hf:
        cfg = {"baseUrl": hf.url, "namespace": "acme"}
        config = ProviderConfig("hf", "huggingface", "production", cfg, {"tokenEnv": "T"})
        check_provider(
            lambda: HuggingFaceProvider(config, repo_root=Path("."), env={"T": "hf_tok"}),
            first,
            second,
            settle=settled,
        )


def test_predibase() -> None:
    scaling = {"minReplicas": 0, "maxReplicas": 1, "hardware": "a10_24gb_100"}
    first, second = pair(
        "pb",
        {"model": "llama-3-1-8b-instruct", "scaling": scaling},
        {
            "model": "llama-3-1-8b-instruct",
            "scaling": {**scaling, "maxReplicas": 2},
            "predibase": {"cooldownSeconds": 900, "adapters": ["support-bot/1"]},
        },
    )
    with FakePredibase("pb_tok", steps=2) as api:
        config = ProviderConfig(
            "pb", "predibase", "production", {"baseUrl": api.url}, {"tokenEnv": "T"}
        )
        check_provider(
            lambda: PredibaseProvider(config, repo_root=Path("."), env={"T": "pb_tok"}),
            first,
            second,
            settle=settled,
        )


class HourTokens:
    """A TokenCredential (azure.core's protocol) whose tokens the ARM stand-in accepts."""

    def __init__(self, az: FakeAzure) -> None:
        self.az = az

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        token = f"entra-{len(self.az.tokens) + 1}"
        self.az.tokens[token] = time.time() + 3600
        return AccessToken(token, int(time.time()) + 3600)


def test_azure_openai_with_its_sku_block_and_azure_identity(tmp_path: Path) -> None:
    sku = {"modelVersion": "2024-08-06"}
    first, second = pair(
        "azure",
        {"model": "gpt-4o", "azure": {**sku, "sku": {"name": "GlobalStandard", "capacity": 10}}},
        {"model": "gpt-4o", "azure": {**sku, "sku": {"name": "GlobalStandard", "capacity": 20}}},
    )
    with FakeAzure("unused", retry_after="0") as az:
        az.add_account(SUB, "rg", "acme")
        az.accept({}, time.time)
        cred = HourTokens(az)
        cfg = {"baseUrl": az.url, "subscriptionId": SUB, "resourceGroup": "rg", "account": "acme"}
        config = ProviderConfig("azure", "azure-openai", "production", cfg, {})
        check_provider(
            lambda: AzureOpenAIProvider(config, repo_root=tmp_path, env={}, credential=cred),
            first,
            second,
        )


def test_huggingface_with_an_engine_a_route_and_an_autoscaling_metric() -> None:
    scaling = {"minReplicas": 1, "maxReplicas": 1, "hardware": "nvidia-l4"}
    block = {
        "image": {"engine": "vllm"},
        "route": {"path": "/v1"},
        "autoscaling": {"metric": "pendingRequests", "threshold": 2},
    }
    first, second = pair(
        "hf",
        {"model": "BAAI/bge-reranker-v2-m3", "scaling": scaling, "huggingface": block},
        {
            "model": "BAAI/bge-reranker-v2-m3",
            "scaling": scaling,
            "huggingface": {**block, "image": {"engine": "tgi"}},
        },
    )
    with FakeHuggingFace("hf_tok", steps=2) as hf:
        cfg = {"baseUrl": hf.url, "namespace": "acme"}
        config = ProviderConfig("hf", "huggingface", "production", cfg, {"tokenEnv": "T"})
        check_provider(
            lambda: HuggingFaceProvider(config, repo_root=Path("."), env={"T": "hf_tok"}),
            first,
            second,
            settle=settled,
        )


class Forgetful(LocalProvider):
    """Drops `options` on the way in: what the check must catch."""

    def live_body(self, live: LiveObject, recorded: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in live.body.items() if k != "options"}


def test_a_provider_that_loses_a_field_is_caught(tmp_path: Path) -> None:
    first, second = pair(
        "local", {"model": "m", "options": {"seed": 1}}, {"model": "m", "options": {"seed": 2}}
    )
    config = ProviderConfig("local", "local", "production")
    with pytest.raises(ContractError, match="reads back as created"):
        check_provider(lambda: Forgetful(config, repo_root=tmp_path, env={}), first, second)
