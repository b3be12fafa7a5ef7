"""The predibase provider against a Predibase control-plane stand-in on 127.0.0.1
(tests/fakes/predibase.py): the create payload, readiness through status(), failures,
updates that keep what the manifests leave out, the accelerator fixed at creation,
ownership by description, shared deployments, lost answers, 429s, drift, and no token
in any error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fakes.loopback import LOST
from fakes.predibase import FakePredibase
from vendor_world import Made

from reconciler.errors import ProviderError
from reconciler.instances import Instance
from reconciler.plan import field_diff
from reconciler.providers.base import InvokeTarget, Problem, Provider, RetryAfter, Usage
from reconciler.providers.conformance import check_provider
from reconciler.providers.predibase import PredibaseProvider

TOKEN = "pb_SECRETtoken0123456789abcdef"
ENV = {"PREDIBASE_API_TOKEN": TOKEN}
PATH = "/v2/deployments/support-llm"


def llm(environment: str = "production", **spec: Any) -> Instance:
    return Instance(
        environment=environment,
        kind="Deployment",
        name="support-llm",
        provider="pb",
        spec={
            "provider": "pb",
            "model": "qwen3-8b",
            "scaling": {"minReplicas": 0, "maxReplicas": 2, "hardware": "a100_80gb_100"},
            "env": {},
            "enabled": True,
            "risk": "high",
            "predibase": {"cooldownSeconds": 1800, "adapters": ["support-bot/3"]},
            **spec,
        },
    )


@pytest.fixture
def pb() -> Iterator[FakePredibase]:
    with FakePredibase(TOKEN, steps=3) as server:
        yield server


@pytest.fixture
def make() -> Iterator[Made[PredibaseProvider]]:
    m = Made(
        PredibaseProvider,
        "pb",
        "predibase",
        lambda url: {"baseUrl": url, "timeoutSeconds": 2},
        {"tokenEnv": "PREDIBASE_API_TOKEN"},
        ENV,
    )
    yield m
    m.close()


def healths(p: PredibaseProvider, pid: str | None, n: int) -> list[str]:
    return [p.status("Deployment", "support-llm", "production", pid).health for _ in range(n)]


def drift(p: PredibaseProvider, inst: Instance, pid: str) -> dict[str, tuple[Any, Any]]:
    live = p.read("Deployment", inst.name, inst.environment, pid)
    assert live is not None
    body = inst.body()
    seen = p.live_body(live, body)
    return {d.path: (d.before, d.after) for d in field_diff(body, {k: seen.get(k) for k in body})}


def test_create_sends_the_sdks_payload_and_readiness_takes_several_polls(
    pb: FakePredibase, make: Made
) -> None:
    p = make(pb.url)
    pid = p.create(llm())
    live = pb.deployment("support-llm")
    assert live is not None and pid == f"support-llm/{live['uuid']}"
    post = next(r for r in pb.requests if r.method == "POST")
    assert post.path == "/v2/deployments"
    assert post.body == {
        "name": "support-llm",
        "config": {
            "baseModel": "qwen3-8b",
            "accelerator": "a100_80gb_100",
            "minReplicas": 0,
            "maxReplicas": 2,
            "cooldownTime": 1800,
            "preloadedAdapters": ["support-bot/3"],
        },
        "description": "managed by reconciler: deployment.support-llm in production",
    }
    states = []
    for _ in range(3):
        s = p.status("Deployment", "support-llm", "production", pid)
        states.append((s.health, pb.deployment("support-llm")["status"]))  # type: ignore[index]
    assert states == [  # the create's own read saw the first initializing
        ("Progressing", "initializing"),
        ("Healthy", "ready"),
        ("Healthy", "ready"),
    ]
    assert p.create(llm()) == pid and pb.creates == {"support-llm": 1}, "adopted, not remade"


def test_a_failed_deploy_is_degraded_and_a_stopped_one_too(pb: FakePredibase, make: Made) -> None:
    p = make(pb.url)
    pb.fail_next_deploy()
    pid = p.create(llm())
    assert healths(p, pid, 3) == ["Progressing", "Degraded", "Degraded"]
    s = p.status("Deployment", "support-llm", "production", pid)
    assert s.health == "Degraded" and s.message.startswith("failed")
    pb.tamper("support-llm", "status", "stopped")
    s = p.status("Deployment", "support-llm", "production", pid)
    assert s.health == "Degraded" and "reconciler does not start" in s.message
    pb.tamper("support-llm", "status", "deploying")  # a word the SDK never names
    assert p.status("Deployment", "support-llm", "production", pid).health == "Progressing"


def test_update_sends_base_model_and_set_fields_only_and_keeps_the_rest(
    pb: FakePredibase, make: Made
) -> None:
    p = make(pb.url)
    pid = p.create(llm())
    healths(p, pid, 3)
    pb.tamper("support-llm", "config.scaleUpRequestThreshold", 4)  # set in the UI
    p.update(llm(scaling={"minReplicas": 1, "maxReplicas": 3, "hardware": "a100_80gb_100"}), pid)
    put = next(r for r in pb.requests if r.method == "PUT")
    assert put.path == PATH
    assert put.body["config"] == {
        "baseModel": "qwen3-8b",
        "minReplicas": 1,
        "maxReplicas": 3,
        "cooldownTime": 1800,
        "preloadedAdapters": ["support-bot/3"],
    }, "no accelerator (fixed) and nothing the manifests leave out"
    live = pb.deployment("support-llm")
    assert live is not None and live["config"]["scaleUpRequestThreshold"] == 4
    assert live["status"] == "updating"
    assert healths(p, pid, 3) == ["Progressing", "Healthy", "Healthy"]


def test_a_changed_accelerator_is_not_sent_as_an_update(pb: FakePredibase, make: Made) -> None:
    p = make(pb.url)
    pid = p.create(llm())
    changed = llm(scaling={"minReplicas": 0, "maxReplicas": 2, "hardware": "h100_80gb_100"})
    with pytest.raises(ProviderError, match="Predibase sets it only at creation"):
        p.update(changed, pid)
    assert not [r for r in pb.requests if r.method == "PUT"]
    reasons = PredibaseProvider.replace_reasons()
    assert reasons["scaling.hardware"].startswith("Predibase cannot change a deployment's accel")
    assert set(reasons) == {
        "scaling.hardware",
        "predibase.quantization",
        "predibase.deploymentName",
    }


def test_the_vendor_refuses_what_predibase_refuses(pb: FakePredibase, make: Made) -> None:
    p = make(pb.url)
    with pytest.raises(ProviderError, match="cooldownTime must be at least 600") as e:
        p.create(llm(predibase={"cooldownSeconds": 60}))
    assert str(e.value).startswith("provider 'pb' (POST ")
    with pytest.raises(ProviderError, match="exceeds your tier's limit of 6"):
        p.create(llm(scaling={"minReplicas": 0, "maxReplicas": 9}))
    with pytest.raises(ProviderError, match="base model 'gpt-4o' is not supported"):
        p.create(llm(model="gpt-4o"))
    assert pb.creates == {}


def test_ownership_by_description(pb: FakePredibase, make: Made) -> None:
    p = make(pb.url)
    pb.create_by_hand("support-llm", {"baseModel": "qwen3-8b"}, "Alice's experiment")
    with pytest.raises(ProviderError, match="was not made by reconciler") as e:
        p.create(llm())
    assert "nothing was changed" in str(e.value)
    with pytest.raises(ProviderError, match="was not made by reconciler"):
        p.delete("Deployment", "support-llm", "production", None)
    assert pb.writes() == []
    pb.tamper(
        "support-llm", "description", "managed by reconciler: deployment.support-llm in staging"
    )
    with pytest.raises(ProviderError, match=r"not deployment\.support-llm in 'production'"):
        p.create(llm())
    pb.add_shared("qwen3-8b", "qwen3-8b")
    with pytest.raises(ProviderError, match="shared deployment, run by Predibase"):
        p.create(llm(predibase={"deploymentName": "qwen3-8b"}))
    assert pb.writes() == []


def test_a_lost_create_answer_is_found_and_adopted(pb: FakePredibase, make: Made) -> None:
    p = make(pb.url)
    pb.fail_next(LOST, method="POST")
    with pytest.raises(ProviderError):
        p.create(llm())
    pid = p.create(llm())
    assert pb.creates == {"support-llm": 1}
    assert pid.startswith("support-llm/")


def test_429_is_waited_out_on_writes_and_handed_back_on_polls(
    pb: FakePredibase, make: Made
) -> None:
    p = make(pb.url)
    pb.fail_next(429, retry_after=7, method="POST", body={"error": "rate limited"})
    pid = p.create(llm())
    assert 7.0 in make.sleeps and pb.creates == {"support-llm": 1}
    pb.fail_next(429, retry_after=12, method="GET")
    with pytest.raises(RetryAfter) as e:
        p.status("Deployment", "support-llm", "production", pid)
    assert e.value.seconds == 12


def test_drift_is_shown_in_the_manifests_names_and_unset_fields_are_not_compared(
    pb: FakePredibase, make: Made
) -> None:
    p = make(pb.url)
    inst = llm()
    pid = p.create(inst)
    pb.tamper("support-llm", "config.scaleUpRequestThreshold", 9)  # not in the manifests
    assert drift(p, inst, pid) == {}
    pb.tamper("support-llm", "config.maxReplicas", 5)
    pb.tamper("support-llm", "config.cooldownTime", 7200)
    pb.tamper("support-llm", "config.preloadedAdapters", [])
    assert drift(p, inst, pid) == {
        "scaling.maxReplicas": (2, 5),
        "predibase.cooldownSeconds": (1800, 7200),
        "predibase.adapters": (["support-bot/3"], []),
    }
    p.update(inst, pid)
    assert drift(p, inst, pid) == {}


def test_plan_time_problems_are_located(make: Made) -> None:
    p = make("http://127.0.0.1:9")  # nothing is asked of the network
    bad = llm(
        scaling={"minReplicas": 0, "maxReplicas": 1, "hardware": "A100 80GB"},
        predibase={"deploymentName": "Support_LLM", "adapters": ["support-bot"]},
        enabled=False,
        options={"temperature": 0.2},
    )
    found = {(x.field, x.message.split(":")[0]) for x in p.validate(bad) if isinstance(x, Problem)}
    fields = {f for f, _ in found}
    assert fields == {
        ("scaling", "hardware"),
        ("predibase", "deploymentName"),
        ("predibase", "adapters", 0),
        ("enabled",),
        ("options",),
    }
    assert not p.validate(llm())
    unconfigured = make("not a url", tokenEnv="x")
    msgs = [x.message for x in unconfigured.validate(llm()) if isinstance(x, Problem)]
    assert any("config.baseUrl must be an http(s) URL" in m for m in msgs)
    assert any("unknown config key 'tokenEnv'" in m for m in msgs)


def test_no_token_in_any_error(pb: FakePredibase, make: Made) -> None:
    p = make(pb.url, env={"PREDIBASE_API_TOKEN": "pb_WRONG-SECRET-value"})
    with pytest.raises(ProviderError) as e:
        p.create(llm())
    assert "401" in str(e.value) and "check the token in PREDIBASE_API_TOKEN" in str(e.value)
    assert "pb_WRONG-SECRET-value" not in str(e.value) + repr(e.value)
    missing = make(pb.url, env={})
    with pytest.raises(ProviderError, match="PREDIBASE_API_TOKEN is not set"):
        missing.read("Deployment", "support-llm", "production", None)
    assert all(TOKEN not in repr(r) for r in pb.requests)


def test_two_environments_share_a_deployment_only_with_one_token(make: Made) -> None:
    prod, staging = make("http://127.0.0.1:9"), make("http://127.0.0.1:9", "staging")
    assert prod.identity(llm()) == staging.identity(llm("staging"))
    other = Made(
        PredibaseProvider,
        "pb",
        "predibase",
        lambda url: {"baseUrl": url},
        {"tokenEnv": "PREDIBASE_STAGING_TOKEN"},
        {},
    )
    try:
        assert other("http://127.0.0.1:9", "staging").identity(llm("staging")) != prod.identity(
            llm()
        )
    finally:
        other.close()


# -- running --------------------------------------------------------------------------------------


def serving(pb: FakePredibase, make: Made[PredibaseProvider], **config: Any) -> PredibaseProvider:
    return make(pb.url, servingUrl=pb.url, tenant=pb.tenant, **config)


def target(ident: str, inst: Instance | None = None) -> InvokeTarget:
    inst = inst or llm()
    return InvokeTarget(inst.environment, inst.name, ident, inst.body())


def settle(p: Provider, ident: str) -> None:
    for _ in range(20):
        if p.status("Deployment", "support-llm", "production", ident).health != "Progressing":
            return
    raise AssertionError("still Progressing after 20 polls")


def test_the_contract_with_a_run(pb: FakePredibase, make: Made[PredibaseProvider]) -> None:
    check_provider(
        lambda: serving(pb, make),
        llm(),
        llm(scaling={"minReplicas": 0, "maxReplicas": 1, "hardware": "a100_80gb_100"}),
        settle=settle,
        invoke_input={"messages": [{"role": "user", "content": "hello"}]},
    )


def test_a_run_is_the_deployments_openai_compatible_chat(
    pb: FakePredibase, make: Made[PredibaseProvider]
) -> None:
    p = serving(pb, make)
    ident = p.create(llm())
    settle(p, ident)
    got = p.invoke(target(ident), {"ticket": "my order is late"}, 60.0)
    assert got.output == 'echo: {"ticket": "my order is late"}'
    assert got.usage == Usage(5, 6)
    (req,) = [r for r in pb.requests if r.path.endswith("/chat/completions")]
    assert req.path == f"/{pb.tenant}/deployments/v2/llms/support-llm/v1/chat/completions"
    assert req.body == {
        "model": "",
        "messages": [{"role": "user", "content": '{"ticket": "my order is late"}'}],
    }


def test_a_run_without_a_tenant_or_of_a_deployment_not_serving_says_why(
    pb: FakePredibase, make: Made[PredibaseProvider]
) -> None:
    p = serving(pb, make)
    ident = p.create(llm())
    settle(p, ident)
    with pytest.raises(ProviderError, match=r"config\.tenant is needed to run a deployment"):
        make(pb.url).invoke(target(ident), {"q": "x"}, 60.0)
    pb.tamper("support-llm", "status", "failed")
    with pytest.raises(ProviderError, match="is failed: it answers only when ready or updating"):
        p.invoke(target(ident), {"q": "x"}, 60.0)
    pb.tamper("support-llm", "status", "ready")
    pb.fail_next(500, body={"error": "replica crashed"}, path=f"/{pb.tenant}/")
    with pytest.raises(ProviderError, match=r"500.*replica crashed") as e:
        p.invoke(target(ident), {"q": "x"}, 60.0)
    assert TOKEN not in e.value.message
    assert len([r for r in pb.requests if r.path.endswith("/chat/completions")]) == 1


def test_suspending_is_refused_with_the_reason(make: Made[PredibaseProvider]) -> None:
    refusal = type(make("http://127.0.0.1:1")).suspend_refusal
    assert refusal is not None and "no way to stop a deployment" in refusal
    assert "scaling.minReplicas: 0" in refusal
