"""The azure-openai provider against an ARM stand-in on 127.0.0.1 (tests/fakes/azure_arm.py):
PUT create-or-update with the pinned api-version, long-running operations followed to
their end, 409 RequestConflict retried, writes serialised per account, ownership by
tags, health from provisioningState, drift in the manifests' own field names."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fakes.azure_arm import API_VERSION, FakeAzure
from vendor_world import Made

from reconciler.errors import ProviderError
from reconciler.instances import Instance
from reconciler.plan import field_diff
from reconciler.providers.azure_openai import AzureOpenAIProvider
from reconciler.providers.base import Problem

TOKEN = "eyJ0eXAi.arm-SECRET-token.sig"
SUB = "0b7e3a51-93c4-4e6a-9d7e-5f1d2c3b4a59"
ENV = {"AZURE_TOKEN": TOKEN}
CONFLICT = {
    "error": {
        "code": "RequestConflict",
        "message": "Another operation is being performed on the parent resource. Please try "
        "again later.",
    }
}


def gpt(name: str = "chat-gpt-4o", environment: str = "production", **spec: Any) -> Instance:
    return Instance(
        environment=environment,
        kind="Deployment",
        name=name,
        provider="azure",
        spec={
            "provider": "azure",
            "model": "gpt-4o",
            "scaling": {"minReplicas": 1, "maxReplicas": 50, "hardware": "GlobalStandard"},
            "env": {},
            "enabled": True,
            "risk": "high",
            "azure": {"modelVersion": "2024-08-06", "versionUpgradeOption": "NoAutoUpgrade"},
            **spec,
        },
    )


@pytest.fixture
def az() -> Iterator[FakeAzure]:
    with FakeAzure(TOKEN) as server:
        yield server


@pytest.fixture
def account(az: FakeAzure) -> str:
    return az.add_account(SUB, "ai-prod", "acme-openai")


@pytest.fixture
def make() -> Iterator[Made[AzureOpenAIProvider]]:
    m = Made(
        AzureOpenAIProvider,
        "azure",
        "azure-openai",
        lambda url: {
            "baseUrl": url,
            "subscriptionId": SUB,
            "resourceGroup": "ai-prod",
            "account": "acme-openai",
            "timeoutSeconds": 2,
        },
        {"tokenEnv": "AZURE_TOKEN"},
        ENV,
    )
    yield m
    m.close()


def test_create_puts_the_deployment_and_follows_its_operation(
    az: FakeAzure, account: str, make: Made
) -> None:
    p = make(az.url)
    pid = p.create(gpt())
    assert pid == f"{account}/deployments/chat-gpt-4o"
    put = next(r for r in az.requests if r.method == "PUT")
    assert put.query == {"api-version": API_VERSION}
    assert put.body == {
        "sku": {"name": "GlobalStandard", "capacity": 50},
        "tags": {"reconciler-environment": "production", "reconciler-deployment": "chat-gpt-4o"},
        "properties": {
            "model": {"format": "OpenAI", "name": "gpt-4o", "version": "2024-08-06"},
            "versionUpgradeOption": "NoAutoUpgrade",
        },
    }
    polls = [r for r in az.requests if "operationStatuses" in r.path]
    assert len(polls) == 2 and make.sleeps == [1.0, 1.0], "Retry-After between polls"
    live = az.deployment(account, "chat-gpt-4o")
    assert live is not None and live["properties"]["provisioningState"] == "Succeeded"
    assert p.status("Deployment", "chat-gpt-4o", "production", pid).health == "Healthy"
    assert TOKEN not in repr(az.requests)


def test_a_failed_operation_is_an_error_in_azures_words(
    az: FakeAzure, account: str, make: Made
) -> None:
    az.fail_next_operation("The model 'gpt-4o' version '2024-08-06' is not available in eastus.")
    p = make(az.url)
    with pytest.raises(ProviderError) as e:
        p.create(gpt())
    assert "operation Failed: DeploymentFailed" in e.value.message
    assert "not available in eastus" in e.value.message
    s = p.status("Deployment", "chat-gpt-4o", "production", None)
    assert s.health == "Degraded" and "Failed" in s.message


def test_an_operation_that_never_ends_is_bounded(az: FakeAzure, account: str, make: Made) -> None:
    az.operation_polls = 1000
    p = make(az.url, operationTimeoutSeconds=3)
    clock = [0.0]
    p.clock = lambda: clock[0]
    p.sleep = lambda s: clock.__setitem__(0, clock[0] + s)
    with pytest.raises(ProviderError) as e:
        p.create(gpt())
    assert "did not end within 3s (config.operationTimeoutSeconds)" in e.value.message


def test_request_conflict_is_retried_and_writes_to_one_account_are_serialised(
    az: FakeAzure, account: str, make: Made
) -> None:
    p = make(az.url)
    az.fail_next(409, 2, body=CONFLICT, method="PUT")
    p.create(gpt())
    assert [r.method for r in az.requests].count("PUT") == 3
    # Two writers at once on one account: the second waits for the first's operation.
    names = [f"chat-{i}" for i in range(4)]
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            make(az.url).create(gpt(name))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and az.conflicts == 0
    assert all(az.deployment(account, n) is not None for n in names)


def test_rate_limits_are_retried(az: FakeAzure, account: str, make: Made) -> None:
    p = make(az.url)
    az.fail_next(429, retry_after=7, body={"error": {"code": "TooManyRequests", "message": "x"}})
    p.create(gpt())
    assert make.sleeps[0] == 7.0


def test_ownership_untagged_or_someone_elses_deployment_is_never_touched(
    az: FakeAzure, account: str, make: Made
) -> None:
    body = {
        "sku": {"name": "GlobalStandard", "capacity": 5},
        "properties": {"model": {"format": "OpenAI", "name": "gpt-4o", "version": "2024-05-13"}},
    }
    az.put_by_hand(account, "chat-gpt-4o", body)
    p = make(az.url)
    with pytest.raises(ProviderError) as e:
        p.create(gpt())
    assert (
        "was not made by reconciler" in e.value.message and "nothing was changed" in e.value.message
    )
    with pytest.raises(ProviderError):
        p.delete("Deployment", "chat-gpt-4o", "production", None)
    staging = {"reconciler-environment": "staging", "reconciler-deployment": "chat-gpt-4o"}
    az.tamper(account, "chat-gpt-4o", "tags", staging)
    with pytest.raises(ProviderError) as e:
        p.update(gpt(), f"{account}/deployments/chat-gpt-4o")
    assert "belongs to deployment.chat-gpt-4o in 'staging'" in e.value.message
    assert not [w for w in az.writes() if w[0] in ("PUT", "DELETE")]
    live = az.deployment(account, "chat-gpt-4o")
    assert live is not None and live["sku"]["capacity"] == 5


def test_update_changes_capacity_and_a_model_change_is_refused_by_azure(
    az: FakeAzure, account: str, make: Made
) -> None:
    p = make(az.url)
    pid = p.create(gpt())
    p.update(gpt(scaling={"minReplicas": 1, "maxReplicas": 80, "hardware": "GlobalStandard"}), pid)
    live = az.deployment(account, "chat-gpt-4o")
    assert live is not None and live["sku"]["capacity"] == 80
    with pytest.raises(ProviderError) as e:  # the plan replaces instead (replace_fields)
        p.update(gpt(model="gpt-4o-mini"), pid)
    assert "400" in e.value.message and "cannot be changed" in e.value.message
    assert "model" in AzureOpenAIProvider.replace_reasons()


def test_update_of_a_deployment_removed_outside_says_heal(
    az: FakeAzure, account: str, make: Made
) -> None:
    p = make(az.url)
    with pytest.raises(ProviderError) as e:
        p.update(gpt(), f"{account}/deployments/chat-gpt-4o")
    assert "drift --heal" in e.value.message


def test_delete_follows_the_location_header_until_gone(
    az: FakeAzure, account: str, make: Made
) -> None:
    p = make(az.url)
    pid = p.create(gpt())
    p.delete("Deployment", "chat-gpt-4o", "production", pid)
    assert az.deployment(account, "chat-gpt-4o") is None
    assert sum("operationResults" in r.path for r in az.requests) == 2
    p.delete("Deployment", "chat-gpt-4o", "production", pid)  # gone: done
    assert p.status("Deployment", "chat-gpt-4o", "production", pid).health == "Missing"


def test_a_missing_account_is_an_error_not_an_absent_deployment(az: FakeAzure, make: Made) -> None:
    p = make(az.url)
    with pytest.raises(ProviderError) as e:
        p.read("Deployment", "chat-gpt-4o", "production", None)
    assert "ParentResourceNotFound" in e.value.message


def test_health_follows_provisioning_state(az: FakeAzure, account: str, make: Made) -> None:
    p = make(az.url)
    pid = p.create(gpt())
    seen = []
    for state in ("Accepted", "Creating", "Succeeded", "Failed", "Canceled", "Disabled"):
        az.tamper(account, "chat-gpt-4o", "properties.provisioningState", state)
        seen.append(p.status("Deployment", "chat-gpt-4o", "production", pid).health)
    assert seen == ["Progressing", "Progressing", "Healthy", "Degraded", "Degraded", "Degraded"]


def test_drift_reads_back_what_azure_holds(az: FakeAzure, account: str, make: Made) -> None:
    p = make(az.url)
    pinned = gpt()
    unpinned = gpt("chat-mini", model="gpt-4o-mini", azure={})
    pid = p.create(pinned)
    mini = p.create(unpinned)

    def drift(inst: Instance, ident: str) -> dict[str, Any]:
        live = p.read("Deployment", inst.name, "production", ident)
        assert live is not None
        return {d.path: d.after for d in field_diff(inst.body(), p.live_body(live, inst.body()))}

    assert drift(pinned, pid) == {} and drift(unpinned, mini) == {}
    az.tamper(account, "chat-gpt-4o", "sku.capacity", 10)
    az.tamper(account, "chat-gpt-4o", "properties.model.version", "2024-11-20")
    az.tamper(account, "chat-mini", "properties.model.version", "2024-11-20")
    assert drift(pinned, pid) == {"scaling.maxReplicas": 10, "azure.modelVersion": "2024-11-20"}
    assert drift(unpinned, mini) == {}, "a version Azure picks is not drift"


def test_polls_never_leave_the_arm_host(az: FakeAzure, account: str, make: Made) -> None:
    """The bearer token goes with every request: an operation URL elsewhere is refused."""
    p = make(az.url.replace("127.0.0.1", "localhost"))
    with pytest.raises(ProviderError) as e:
        p.create(gpt())
    assert "not following it" in e.value.message


def test_expired_token_gets_a_hint_and_never_shows(az: FakeAzure, account: str, make: Made) -> None:
    p = make(az.url, env={"AZURE_TOKEN": "eyJ-expired-SECRET-token"})
    with pytest.raises(ProviderError) as e:
        p.create(gpt())
    assert "401" in e.value.message and "AZURE_TOKEN" in e.value.message
    assert "expired-SECRET" not in e.value.message
    with pytest.raises(ProviderError) as e:
        make(az.url, env={}).create(gpt())
    assert "AZURE_TOKEN is not set" in e.value.message and "az account get-access-token" in (
        e.value.message
    )


def test_validate_names_each_problem_and_where(make: Made) -> None:
    p = make("https://management.azure.com")
    sched = Instance("production", "Schedule", "nightly", p.name, {"cron": "0 2 * * *"})
    assert "runs no schedules" in str(p.validate(sched))
    assert p.validate(gpt()) == []
    inst = gpt(
        model="gpt 4o",
        scaling={"minReplicas": 1, "maxReplicas": 5, "hardware": "globalstandard"},
        options={"temperature": 0.2},
        azure={"deploymentName": "-bad", "raiPolicyName": "Microsoft.DefaultV2"},
    )
    where = {x.field: x.message for x in p.validate(inst) if isinstance(x, Problem)}
    assert "not an Azure model name" in where[("model",)]
    assert "did you mean 'GlobalStandard'" in where[("scaling", "hardware")]
    assert "no place for `options`" in where[("options",)]
    assert ("azure", "deploymentName") in where and ("azure", "raiPolicyName") not in where
    no_sku = gpt(scaling={"minReplicas": 1, "maxReplicas": 1})
    assert any(
        isinstance(x, Problem) and x.field == ("scaling", "hardware") for x in p.validate(no_sku)
    )
    bad = make("https://management.azure.com", subscriptionId="not-a-guid", account=None)
    on_provider = {x.field for x in bad.validate(gpt()) if isinstance(x, Problem)}
    assert {("config", "subscriptionId"), ("config", "account")} <= on_provider
