"""The huggingface provider against an Inference Endpoints stand-in on 127.0.0.1
(tests/fakes/hf_endpoints.py): the create payload, slow readiness through status(),
failures, pause and resume, ownership by tags, lost answers, drift, secrets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fakes.hf_endpoints import FakeHuggingFace
from fakes.loopback import LOST
from vendor_world import Made

from reconciler.errors import ProviderError
from reconciler.instances import Instance
from reconciler.plan import FieldDiff, field_diff
from reconciler.providers.base import Problem, Provider
from reconciler.providers.conformance import check_provider
from reconciler.providers.huggingface import HuggingFaceProvider

TOKEN = "hf_SECRETtoken0123456789abcdef"
VENDOR_KEY = "vendor-SECRET-value-42"
ENV = {"HF_TOKEN": TOKEN, "VENDOR_KEY": VENDOR_KEY}


def reranker(environment: str = "production", **spec: Any) -> Instance:
    return Instance(
        environment=environment,
        kind="Deployment",
        name="reranker",
        provider="hf",
        spec={
            "provider": "hf",
            "model": "bge-reranker-v2",
            "scaling": {"minReplicas": 1, "maxReplicas": 4, "hardware": "nvidia-a10g"},
            "env": {"LOG_LEVEL": "info", "VENDOR_KEY": {"secretEnv": "VENDOR_KEY"}},
            "enabled": True,
            "risk": "high",
            "huggingface": {
                "repository": "BAAI/bge-reranker-v2-m3",
                "task": "sentence-ranking",
                "revision": "953dc6f6f85a1b2dbfca4c34a2796e7dde08d41e",
            },
            **spec,
        },
    )


@pytest.fixture
def hf() -> Iterator[FakeHuggingFace]:
    with FakeHuggingFace(TOKEN, steps=3) as server:
        yield server


@pytest.fixture
def make() -> Iterator[Made[HuggingFaceProvider]]:
    m = Made(
        HuggingFaceProvider,
        "hf",
        "huggingface",
        lambda url: {"baseUrl": url, "namespace": "acme", "timeoutSeconds": 2},
        {"tokenEnv": "HF_TOKEN"},
        ENV,
    )
    yield m
    m.close()


def healths(p: HuggingFaceProvider, pid: str | None, n: int) -> list[str]:
    return [p.status("Deployment", "reranker", "production", pid).health for _ in range(n)]


def test_create_sends_the_payload_and_readiness_takes_several_polls(
    hf: FakeHuggingFace, make: Made
) -> None:
    p = make(hf.url)
    pid = p.create(reranker())
    assert pid == "acme/reranker"
    post = next(r for r in hf.requests if r.method == "POST")
    assert post.path == "/v2/endpoint/acme"
    assert post.body == {
        "name": "reranker",
        "type": "authenticated",
        "provider": {"vendor": "aws", "region": "us-east-1"},
        "compute": {
            "accelerator": "gpu",
            "instanceType": "nvidia-a10g",
            "instanceSize": "x1",
            "scaling": {"minReplica": 1, "maxReplica": 4},
        },
        "model": {
            "repository": "BAAI/bge-reranker-v2-m3",
            "framework": "pytorch",
            "revision": "953dc6f6f85a1b2dbfca4c34a2796e7dde08d41e",
            "image": {"huggingface": {}},
            "env": {"LOG_LEVEL": "info"},
            "secrets": {"VENDOR_KEY": VENDOR_KEY},
            "task": "sentence-ranking",
        },
        "tags": ["reconciler-env:production", "reconciler-deployment:reranker"],
    }
    states = []
    for _ in range(4):
        s = p.status("Deployment", "reranker", "production", pid)
        states.append((s.health, hf.endpoint("acme", "reranker")["status"]["state"]))  # type: ignore[index]
    assert states == [
        ("Progressing", "pending"),
        ("Progressing", "initializing"),
        ("Progressing", "initializing"),
        ("Healthy", "running"),
    ]
    assert p.create(reranker()) == pid and hf.creates == {"reranker": 1}


def test_a_failed_deploy_and_a_failed_update_are_degraded(hf: FakeHuggingFace, make: Made) -> None:
    p = make(hf.url)
    hf.fail_next_deploy("Endpoint failed to deploy: CUDA out of memory")
    pid = p.create(reranker())
    *_, last = healths(p, pid, 4)
    s = p.status("Deployment", "reranker", "production", pid)
    assert last == "Degraded" and s.health == "Degraded" and "CUDA out of memory" in s.message
    hf.fail_next_deploy("Update failed: image pull error")
    p.update(reranker(scaling={"minReplicas": 1, "maxReplicas": 2, "hardware": "nvidia-l4"}), pid)
    assert healths(p, pid, 4) == ["Progressing", "Progressing", "Progressing", "Degraded"]
    assert hf.endpoint("acme", "reranker")["status"]["state"] == "updateFailed"  # type: ignore[index]


def test_update_sends_compute_model_and_tags_only(hf: FakeHuggingFace, make: Made) -> None:
    p = make(hf.url)
    pid = p.create(reranker())
    healths(p, pid, 4)
    p.update(reranker(scaling={"minReplicas": 2, "maxReplicas": 8, "hardware": "nvidia-a100"}), pid)
    put = next(r for r in hf.requests if r.method == "PUT")
    assert set(put.body) == {"compute", "model", "tags"}
    live = hf.endpoint("acme", "reranker")
    assert live is not None and live["compute"]["instanceType"] == "nvidia-a100"
    assert live["compute"]["scaling"] == {"minReplica": 2, "maxReplica": 8}
    assert healths(p, pid, 4) == ["Progressing", "Progressing", "Progressing", "Healthy"]


def test_disabled_is_a_paused_endpoint_and_suspended_not_failed(
    hf: FakeHuggingFace, make: Made
) -> None:
    p = make(hf.url)
    pid = p.create(reranker(enabled=False))
    assert [r.path for r in hf.requests if r.method == "POST"][-1].endswith("/reranker/pause")
    s = p.status("Deployment", "reranker", "production", pid)
    assert s.health == "Suspended"
    p.update(reranker(), pid)
    assert [r.path for r in hf.requests if r.method == "POST"][-1].endswith("/reranker/resume")
    assert healths(p, pid, 4)[-1] == "Healthy"
    hf.tamper("acme", "reranker", "status.state", "scaledToZero")
    assert p.status("Deployment", "reranker", "production", pid).health == "Suspended"


def test_scale_to_zero_settings(hf: FakeHuggingFace, make: Made) -> None:
    p = make(hf.url)
    inst = reranker(
        scaling={"minReplicas": 0, "maxReplicas": 1, "hardware": "intel-icl"},
        huggingface={
            "repository": "BAAI/bge-reranker-v2-m3",
            "scaleToZeroTimeout": 30,
            "instanceSize": "x2",
        },
    )
    assert p.validate(inst) == []
    p.create(inst)
    live = hf.endpoint("acme", "reranker")
    assert live is not None and live["compute"]["accelerator"] == "cpu"
    assert live["compute"]["scaling"] == {
        "minReplica": 0,
        "maxReplica": 1,
        "scaleToZeroTimeout": 30,
    }


def test_a_lost_create_answer_is_found_not_made_twice(hf: FakeHuggingFace, make: Made) -> None:
    p = make(hf.url)
    hf.fail_next(LOST, method="POST")
    with pytest.raises(ProviderError) as e:
        p.create(reranker())
    assert "not retried" in e.value.message
    assert p.create(reranker()) == "acme/reranker"
    assert hf.creates == {"reranker": 1}


def test_rate_limits_and_server_errors_are_retried(hf: FakeHuggingFace, make: Made) -> None:
    p = make(hf.url)
    hf.fail_next(429, retry_after=2, body={"error": "Too many requests"})
    hf.fail_next(503, method="GET", body={"error": "unavailable"})
    p.create(reranker())
    assert make.sleeps[0] == 2.0 and len(make.sleeps) == 2
    assert hf.creates == {"reranker": 1}


def test_ownership_another_endpoint_of_that_name_is_never_touched(
    hf: FakeHuggingFace, make: Made
) -> None:
    hand = {
        "name": "reranker",
        "type": "private",
        "provider": {"vendor": "aws", "region": "us-east-1"},
        "compute": {
            "accelerator": "cpu",
            "instanceType": "intel-icl",
            "instanceSize": "x1",
            "scaling": {"minReplica": 1, "maxReplica": 1},
        },
        "model": {"repository": "gpt2", "framework": "pytorch", "image": {"huggingface": {}}},
        "tags": ["team-search"],
    }
    hf.create_by_hand("acme", hand)
    p = make(hf.url)
    with pytest.raises(ProviderError) as e:
        p.create(reranker())
    assert "was not made by reconciler" in e.value.message
    with pytest.raises(ProviderError):
        p.delete("Deployment", "reranker", "production", "acme/reranker")
    hf.tamper(
        "acme", "reranker", "tags", ["reconciler-env:staging", "reconciler-deployment:reranker"]
    )
    with pytest.raises(ProviderError) as e:
        p.update(reranker(), "acme/reranker")
    assert "reconciler-env:staging" in e.value.message
    assert [w for w in hf.writes() if w[0] in ("PUT", "DELETE")] == []


def test_delete_and_missing(hf: FakeHuggingFace, make: Made) -> None:
    p = make(hf.url)
    pid = p.create(reranker())
    p.delete("Deployment", "reranker", "production", pid)
    assert hf.endpoint("acme", "reranker") is None
    p.delete("Deployment", "reranker", "production", pid)
    assert p.read("Deployment", "reranker", "production", pid) is None
    assert p.status("Deployment", "reranker", "production", pid).health == "Missing"
    with pytest.raises(ProviderError) as e:
        p.update(reranker(), pid)
    assert "drift --heal" in e.value.message


def test_drift_in_the_manifests_names_and_secrets_by_presence(
    hf: FakeHuggingFace, make: Made
) -> None:
    p = make(hf.url)
    inst = reranker()
    pid = p.create(inst)

    def drift() -> dict[str, Any]:
        live = p.read("Deployment", "reranker", "production", pid)
        assert live is not None
        body = p.live_body(live, inst.body())
        assert VENDOR_KEY not in repr(body), "a secret value reached the drift body"
        return {d.path: d.after for d in field_diff(inst.body(), body)}

    assert drift() == {}
    healths(p, pid, 4)  # running: what a person then changes by hand
    hf.tamper("acme", "reranker", "compute.scaling.maxReplica", 1)
    hf.tamper("acme", "reranker", "model.env", {"LOG_LEVEL": "debug", "EXTRA": "1"})
    hf.tamper("acme", "reranker", "model.secrets", {})
    hf.tamper("acme", "reranker", "status.state", "paused")
    assert drift() == {
        "scaling.maxReplicas": 1,
        "env.LOG_LEVEL": "debug",
        "env.EXTRA": "1",
        "env.VENDOR_KEY": None,
        "enabled": False,
    }


def test_errors_never_carry_the_token_or_a_secret(hf: FakeHuggingFace, make: Made) -> None:
    p = make(hf.url, env={"HF_TOKEN": "hf_WRONG_SECRET_0000", "VENDOR_KEY": VENDOR_KEY})
    with pytest.raises(ProviderError) as e:
        p.create(reranker())
    assert "401" in e.value.message and "HF_TOKEN" in e.value.message
    assert "hf_WRONG_SECRET_0000" not in e.value.message
    p = make(hf.url, env={"HF_TOKEN": TOKEN})
    with pytest.raises(ProviderError) as e:
        p.create(reranker())
    assert "VENDOR_KEY" in e.value.message and VENDOR_KEY not in e.value.message
    assert all(VENDOR_KEY not in repr(r) and TOKEN not in repr(r) for r in hf.requests[:1])


def test_validate_names_each_problem_and_where(make: Made) -> None:
    p = make("https://api.endpoints.huggingface.cloud")
    sched = Instance("production", "Schedule", "nightly", p.name, {"cron": "0 2 * * *"})
    assert "runs no schedules" in str(p.validate(sched))
    assert p.validate(reranker()) == []
    inst = reranker(
        scaling={"minReplicas": 0, "maxReplicas": 2, "hardware": "NVIDIA A10G"},
        huggingface={"instanceSize": "large"},
        model="bge reranker v2",
        prompt={"name": "p", "version": "1.0.0", "template": "x"},
    )
    where = {x.field: x.message for x in p.validate(inst) if isinstance(x, Problem)}
    assert "not a Hub repository" in where[("model",)]
    assert "instance type" in where[("scaling", "hardware")]
    assert "size such as x1" in where[("huggingface", "instanceSize")]
    assert "scaleToZeroTimeout" in where[("scaling", "minReplicas")]
    assert "no place for `prompt`" in where[("prompt",)]
    long_name = Instance(
        "production", "Deployment", "a_very_long_deployment_name_for_hf", "hf", reranker().spec
    )
    assert any(
        isinstance(x, Problem) and "huggingface.endpointName" in x.message
        for x in p.validate(long_name)
    )
    rule = HuggingFaceProvider.delete_rule(p.config, "Deployment", "reranker", reranker().body())
    assert rule.refused is None and rule.note and "for good" in rule.note


def test_a_409_on_create_adopts_our_own_endpoint(hf: FakeHuggingFace, make: Made) -> None:
    """Made by our own earlier attempt between the lookup and the POST: adopted, once."""
    p = make(hf.url)
    p.create(reranker())
    healths(p, "acme/reranker", 4)
    hf.fail_next(404, method="GET", body={"error": "Endpoint reranker not found"})
    wider = reranker(scaling={"minReplicas": 1, "maxReplicas": 6, "hardware": "nvidia-a10g"})
    assert p.create(wider) == "acme/reranker"
    assert [m for m, _ in hf.writes()] == ["POST", "POST", "PUT"]
    assert hf.creates == {"reranker": 1}
    live = hf.endpoint("acme", "reranker")
    assert live is not None and live["compute"]["scaling"]["maxReplica"] == 6


# --- engine, route, autoscaling; never resetting what the manifest leaves out -------------


def test_an_engine_picked_in_the_ui_survives_an_update_that_names_none(
    hf: FakeHuggingFace, make: Made
) -> None:
    """Every write used to send the default engine ({huggingface: {}}), the framework
    pytorch and the size x1, switching back what someone chose in the UI."""
    p = make(hf.url)
    pid = p.create(reranker())
    vllm = {"vllm": {"url": "vllm/vllm-openai:v0.6.3", "tensorParallelSize": 1}}
    hf.tamper("acme", "reranker", "model.image", vllm)  # picked in the UI
    hf.tamper("acme", "reranker", "compute.instanceSize", "x4")
    p.update(reranker(scaling={"minReplicas": 1, "maxReplicas": 6, "hardware": "nvidia-a10g"}), pid)
    put = [r for r in hf.requests if r.method == "PUT"][-1]
    assert "image" not in put.body["model"] and "framework" not in put.body["model"]
    assert "instanceSize" not in put.body["compute"]
    live = hf.endpoint("acme", "reranker")
    assert live is not None
    assert live["model"]["image"] == vllm and live["compute"]["instanceSize"] == "x4"
    assert live["compute"]["scaling"]["maxReplica"] == 6
    # Not in the manifest, so not drift either.
    found = p.read("Deployment", "reranker", "production", pid)
    assert found is not None
    assert field_diff(reranker().body(), p.live_body(found, reranker().body())) == [
        FieldDiff("scaling.maxReplicas", 4, 6)
    ]


def served(**block: Any) -> Instance:
    inst = reranker()
    hb = {**inst.spec["huggingface"], **block}
    return Instance(
        inst.environment, inst.kind, inst.name, inst.provider, {**inst.spec, "huggingface": hb}
    )


def test_engine_route_and_autoscaling_metric_are_written_and_drift(
    hf: FakeHuggingFace, make: Made
) -> None:
    p = make(hf.url)
    inst = served(
        image={
            "engine": "custom",
            "url": "ghcr.io/acme/ranker:1.2",
            "port": 8080,
            "healthRoute": "/healthz",
        },
        route={"path": "/v1"},
        autoscaling={"metric": "hardwareUsage", "threshold": 80},
    )
    assert p.validate(inst) == []
    pid = p.create(inst)
    post = next(r for r in hf.requests if r.method == "POST")
    assert post.body["model"]["image"] == {
        "custom": {"url": "ghcr.io/acme/ranker:1.2", "port": 8080, "healthRoute": "/healthz"}
    }
    assert post.body["compute"]["scaling"]["measure"] == {"hardwareUsage": 80}
    assert post.body["route"] == {"path": "/v1"}
    found = p.read("Deployment", "reranker", "production", pid)
    assert found is not None and field_diff(inst.body(), p.live_body(found, inst.body())) == []
    hf.tamper("acme", "reranker", "model.image", {"huggingface": {}})
    hf.tamper("acme", "reranker", "compute.scaling.measure", {"pendingRequests": 1.5})
    found = p.read("Deployment", "reranker", "production", pid)
    assert found is not None
    diff = {d.path: d.after for d in field_diff(inst.body(), p.live_body(found, inst.body()))}
    assert diff == {
        "huggingface.image": {"engine": "huggingface"},
        "huggingface.autoscaling.metric": "pendingRequests",
        "huggingface.autoscaling.threshold": 1.5,
    }
    p.update(served(image={"engine": "vllm"}), pid)  # heal, to another engine
    live = hf.endpoint("acme", "reranker")
    assert live is not None and live["model"]["image"] == {"vllm": {}}


def test_engine_fields_are_checked_where_written(make: Made) -> None:
    p = make("https://api.endpoints.huggingface.cloud")
    inst = served(image={"engine": "custom"}, route={"path": "v1"})
    where = {x.field: x.message for x in p.validate(inst) if isinstance(x, Problem)}
    assert "needs image.url" in where[("huggingface", "image")]
    assert "must start with '/'" in where[("huggingface", "route", "path")]
    inst = served(image={"engine": "tgi", "port": 80})
    where = {x.field: x.message for x in p.validate(inst) if isinstance(x, Problem)}
    assert "is for a custom container" in where[("huggingface", "image", "port")]


# -- suspending and running --------------------------------------------------------------------


def test_suspended_pauses_and_lifting_it_resumes(hf: FakeHuggingFace, make: Made) -> None:
    p = make(hf.url)
    pid = p.create(reranker())
    assert healths(p, pid, 4)[-1] == "Healthy"
    p.update(reranker(suspended=True), pid)
    assert [r.path for r in hf.requests if r.method == "POST"][-1].endswith("/reranker/pause")
    assert p.status("Deployment", "reranker", "production", pid).health == "Suspended"
    recorded = reranker(suspended=True).body()
    live = p.read("Deployment", "reranker", "production", pid)
    assert live is not None
    assert not field_diff(recorded, p.live_body(live, recorded))
    p.update(reranker(suspended=True), pid)  # paused already: nothing more to send
    assert [r.path for r in hf.requests if r.method == "POST"][-1].endswith("/reranker/pause")
    assert len([r for r in hf.requests if r.path.endswith("/pause")]) == 1
    p.update(reranker(), pid)
    assert [r.path for r in hf.requests if r.method == "POST"][-1].endswith("/reranker/resume")
    assert healths(p, pid, 4)[-1] == "Healthy"


def test_a_resume_by_hand_of_a_suspended_endpoint_is_drift(hf: FakeHuggingFace, make: Made) -> None:
    p = make(hf.url)
    pid = p.create(reranker(suspended=True))
    hf.tamper("acme", "reranker", "status.state", "running")
    recorded = reranker(suspended=True).body()
    live = p.read("Deployment", "reranker", "production", pid)
    assert live is not None
    (d,) = field_diff(recorded, p.live_body(live, recorded))
    assert (d.path, d.before, d.after) == ("suspended", True, False)
    p.update(reranker(suspended=True), pid)  # heal: paused again
    assert [r.path for r in hf.requests if r.method == "POST"][-1].endswith("/reranker/pause")


def test_a_scaled_to_zero_endpoint_is_paused_when_suspended(
    hf: FakeHuggingFace, make: Made
) -> None:
    p = make(hf.url)
    pid = p.create(reranker())
    healths(p, pid, 4)
    hf.tamper("acme", "reranker", "status.state", "scaledToZero")  # wakes at a request
    p.update(reranker(suspended=True), pid)
    assert [r.path for r in hf.requests if r.method == "POST"][-1].endswith("/reranker/pause")


def test_the_contract_with_a_run(hf: FakeHuggingFace, make: Made) -> None:
    hf.serve_inference = True

    def settle(q: Provider, ident: str) -> None:
        for _ in range(20):
            if q.status("Deployment", "reranker", "production", ident).health != "Progressing":
                return
        raise AssertionError("still Progressing after 20 polls")

    check_provider(
        lambda: make(hf.url),
        reranker(),
        reranker(scaling={"minReplicas": 1, "maxReplicas": 2, "hardware": "nvidia-a10g"}),
        settle=settle,
        invoke_input={"messages": [{"role": "user", "content": "rank these"}]},
    )
