"""The azure-openai provider against an ARM stand-in on 127.0.0.1 (tests/fakes/azure_arm.py):
PUT create-or-update with the pinned api-version, long-running operations followed to
their end, 409 RequestConflict retried, writes serialised per account, ownership by
tags, health from provisioningState, drift in the manifests' own field names."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from fakes.azure_arm import API_VERSION, FakeAzure
from fakes.azure_identity import FakeManagedIdentity
from vendor_world import FakeTime, Made

from reconciler.errors import ProviderError
from reconciler.instances import Instance, ProviderConfig
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
        isinstance(x, Problem) and x.field == ("azure",) and "needs azure.sku.name" in x.message
        for x in p.validate(no_sku)
    )
    bad = make("https://management.azure.com", subscriptionId="not-a-guid", account=None)
    on_provider = {x.field for x in bad.validate(gpt()) if isinstance(x, Problem)}
    assert {("config", "subscriptionId"), ("config", "account")} <= on_provider


# --- another operation on the account; one writer per account across processes --------


def timed(
    az: FakeAzure, t: FakeTime, tmp_path: Path, *, credential: Any = None, **config: Any
) -> AzureOpenAIProvider:
    cfg = {
        "baseUrl": az.url,
        "subscriptionId": SUB,
        "resourceGroup": "ai-prod",
        "account": "acme-openai",
        "timeoutSeconds": 2,
        **config,
    }
    creds = {} if credential is not None else {"tokenEnv": "AZURE_TOKEN"}
    return AzureOpenAIProvider(
        ProviderConfig("azure", "azure-openai", "production", cfg, creds),
        repo_root=tmp_path,
        env=ENV,
        sleep=t.sleep,
        clock=t.clock,
        rng=random.Random(7),
        credential=credential,
    )


def test_another_operation_on_the_account_is_waited_out(
    az: FakeAzure, account: str, tmp_path: Path
) -> None:
    """Real ARM operations take a minute or more: 409s used to fail the apply after
    about 19 s of backoff."""
    az.operation_polls = 0
    t = FakeTime()
    az.busy_until(account, t.now + 150, t.clock)  # the portal, another CI job
    p = timed(az, t, tmp_path)
    try:
        p.create(gpt())
    finally:
        p.close()
    assert az.deployment(account, "chat-gpt-4o") is not None
    assert 150 <= sum(t.sleeps) <= 150 + 60  # at most one capped wait past its end
    assert az.conflicts == len(t.sleeps) <= 8  # backoff, not a tight loop


def test_a_conflict_longer_than_the_operation_timeout_fails_saying_so(
    az: FakeAzure, account: str, tmp_path: Path
) -> None:
    t = FakeTime()
    az.busy_until(account, t.now + 10_000, t.clock)
    p = timed(az, t, tmp_path, operationTimeoutSeconds=120)
    try:
        with pytest.raises(ProviderError) as e:
            p.create(gpt())
    finally:
        p.close()
    assert sum(t.sleeps) <= 120
    assert "409 RequestConflict: the account was still busy with another operation" in (
        e.value.message
    )
    assert "config.operationTimeoutSeconds (120s); apply again later" in e.value.message
    assert az.deployment(account, "chat-gpt-4o") is None


def test_writers_in_other_processes_are_serialised_by_the_account_lock(
    az: FakeAzure, account: str, tmp_path: Path
) -> None:
    az.operation_polls = 0
    t = FakeTime()
    p = timed(az, t, tmp_path, operationTimeoutSeconds=30)
    s = p.settings
    lock = p.locks.path((s.base_url + s.account_path).lower())
    assert lock.parent == tmp_path / ".reconciler" / "locks"
    holder = subprocess.Popen(  # another reconciler process, in the middle of a write
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"os.makedirs({str(lock.parent)!r}, exist_ok=True)\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(ProviderError) as e:
            p.create(gpt())
        assert "another process kept writing to account 'acme-openai' for over 30s" in (
            e.value.message
        )
        assert az.writes() == [] and 0 < sum(t.sleeps) <= 30
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    p.create(gpt())  # released: the write goes ahead
    assert az.deployment(account, "chat-gpt-4o") is not None
    p.close()


# --- authentication: azure-identity, tokens refreshed before they expire ---------------


class CountingCredential:
    """A TokenCredential (azure.core's protocol) handing out hour-long tokens on the
    test's clock: the seam embedders and tests use; azure-identity's own classes are
    used in the test after it."""

    def __init__(self, t: FakeTime, az: FakeAzure) -> None:
        self.t, self.az, self.calls = t, az, 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        assert scopes == ("https://management.azure.com/.default",)
        self.calls += 1
        token = f"entra-SECRET-{self.calls}"
        expires = self.t.now + 3600
        self.az.tokens[token] = expires
        return AccessToken(token, int(expires))


def test_an_expiring_token_is_refreshed_so_a_long_running_agent_keeps_working(
    az: FakeAzure, account: str, tmp_path: Path
) -> None:
    az.operation_polls = 0
    t = FakeTime()
    az.accept({}, t.clock)
    cred = CountingCredential(t, az)
    p = timed(az, t, tmp_path, credential=cred)
    try:
        p.create(gpt())
        t.now += 3000  # fifty minutes on: the token is still good
        p.read("Deployment", "chat-gpt-4o", "production", None)
        assert cred.calls == 1
        t.now += 900  # an hour and five minutes: the first token has expired
        p.update(
            gpt(scaling={"minReplicas": 1, "maxReplicas": 80, "hardware": "GlobalStandard"}),
            f"{account}/deployments/chat-gpt-4o",
        )
        assert cred.calls == 2
    finally:
        p.close()
    assert az.deployment(account, "chat-gpt-4o")["sku"]["capacity"] == 80  # type: ignore[index]


def test_default_chain_takes_a_managed_identity_token_from_azure_identity(
    az: FakeAzure, account: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tokenEnv: azure-identity's DefaultAzureCredential, here finding the managed
    identity App Service gives an app (IDENTITY_ENDPOINT), on a loopback stand-in.
    Tokens of 200 s (under the five-minute margin) make each request ask again."""
    az.operation_polls = 0
    with FakeManagedIdentity(lifetime=200) as mi:
        for var in (
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
            "AZURE_CLIENT_SECRET",
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_USERNAME",
        ):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("IDENTITY_ENDPOINT", mi.endpoint)
        monkeypatch.setenv("IDENTITY_HEADER", mi.header)
        az.accept(mi.issued, time.time)
        p = make_provider(az, tmp_path)
        try:
            assert p.validate(gpt()) == []
            p.create(gpt())
            p.read("Deployment", "chat-gpt-4o", "production", None)
        finally:
            p.close()
        assert len(mi.issued) >= 2  # refreshed, by azure-identity, before expiry
    assert az.deployment(account, "chat-gpt-4o") is not None


def make_provider(az: FakeAzure, tmp_path: Path) -> AzureOpenAIProvider:
    cfg = {
        "baseUrl": az.url,
        "subscriptionId": SUB,
        "resourceGroup": "ai-prod",
        "account": "acme-openai",
        "timeoutSeconds": 5,
    }
    return AzureOpenAIProvider(
        ProviderConfig("azure", "azure-openai", "production", cfg, {}),
        repo_root=tmp_path,
        env={},
    )


def test_authentication_settings_are_checked_where_written(make: Made) -> None:
    p = make("https://management.azure.com", authentication="azure-identity")
    where = {x.field: x.message for x in p.validate(gpt()) if isinstance(x, Problem)}
    assert (
        "credentials.tokenEnv is a static token, but config.authentication is "
        in (where[("credentials", "tokenEnv")])
    )
    p = make("https://management.azure.com", lockDirectory="/tmp/x")  # the operator's
    where = {x.field: x.message for x in p.validate(gpt()) if isinstance(x, Problem)}
    assert "unknown config key 'lockDirectory'" in where[("config", "lockDirectory")]
    p = make("https://management.azure.com", env={**ENV, "RECONCILER_LOCK_DIR": "/run/locks"})
    assert p.locks.directory == Path("/run/locks")


# --- the SKU as Azure and Terraform name it -----------------------------------------------


def sku_gpt(name: str = "GlobalStandard", capacity: int = 100) -> Instance:
    inst = gpt()
    spec = {k: v for k, v in inst.spec.items() if k != "scaling"}
    spec["azure"] = {**spec["azure"], "sku": {"name": name, "capacity": capacity}}
    return Instance(inst.environment, inst.kind, inst.name, inst.provider, spec)


def test_the_sku_is_azure_sku_name_and_capacity(az: FakeAzure, account: str, make: Made) -> None:
    p = make(az.url)
    assert p.validate(sku_gpt()) == []
    pid = p.create(sku_gpt())
    assert az.deployment(account, "chat-gpt-4o")["sku"] == {  # type: ignore[index]
        "name": "GlobalStandard",
        "capacity": 100,
    }
    az.tamper(account, "chat-gpt-4o", "sku.capacity", 10)
    live = p.read("Deployment", "chat-gpt-4o", "production", pid)
    assert live is not None
    diff = {
        d.path: (d.before, d.after)
        for d in field_diff(sku_gpt().body(), p.live_body(live, sku_gpt().body()))
    }
    assert diff == {"azure.sku.capacity": (100, 10)}
    # The same deployment moved from the deprecated fields: an update, no write needed
    # to change anything, and never a replace.
    assert "scaling.hardware" not in p.replace_reasons()
    assert "azure.sku.name" not in p.replace_reasons()


def test_a_sku_name_change_is_refused_before_anything_is_written(
    az: FakeAzure, account: str, make: Made
) -> None:
    p = make(az.url)
    pid = p.create(sku_gpt())
    writes = len(az.writes())
    with pytest.raises(ProviderError) as e:
        p.update(sku_gpt("Standard"), pid)
    assert "cannot change a deployment's SKU in place (GlobalStandard → Standard" in (
        e.value.message
    )
    assert "give it a new azure.deploymentName" in e.value.message
    assert len(az.writes()) == writes


def test_the_sku_in_both_places_or_nowhere_is_an_error_where_written(make: Made) -> None:
    p = make("https://management.azure.com")
    both = sku_gpt()
    both = Instance(
        both.environment,
        both.kind,
        both.name,
        both.provider,
        {**both.spec, "scaling": {"hardware": "Standard", "maxReplicas": 5}},
    )
    where = {x.field: x.message for x in p.validate(both) if isinstance(x, Problem)}
    assert "`scaling` has no meaning next to azure.sku" in where[("scaling",)]
    bad = sku_gpt("globalstandard")
    where = {x.field: x.message for x in p.validate(bad) if isinstance(x, Problem)}
    assert "did you mean 'GlobalStandard'" in where[("azure", "sku", "name")]


def test_moving_from_the_deprecated_fields_is_a_plain_update(
    az: FakeAzure, account: str, make: Made
) -> None:
    p = make(az.url)
    old = gpt(scaling={"minReplicas": 1, "maxReplicas": 100, "hardware": "GlobalStandard"})
    pid = p.create(old)
    new = sku_gpt("GlobalStandard", 100)
    reasons = p.replace_reasons()
    diff = field_diff(old.body(), new.body())
    assert diff and not any(d.path.startswith(tuple(reasons)) for d in diff)  # no replace
    p.update(new, pid)
    assert az.deployment(account, "chat-gpt-4o")["sku"] == {  # type: ignore[index]
        "name": "GlobalStandard",
        "capacity": 100,
    }
    live = p.read("Deployment", "chat-gpt-4o", "production", pid)
    assert live is not None and field_diff(new.body(), p.live_body(live, new.body())) == []
