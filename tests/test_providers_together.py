"""The together provider against a Together dedicated-endpoints stand-in on 127.0.0.1
(tests/fakes/together.py): server-side ids, a create found again by its display name
(never a second endpoint), readiness through status(), ERROR and STOPPED, PATCHes of
what differs only, ownership by display name, 429s, drift in the manifests' names, and
no key in any error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fakes.loopback import LOST
from fakes.together import FakeTogether
from vendor_world import Made

from reconciler.errors import ProviderError
from reconciler.instances import Instance
from reconciler.plan import field_diff
from reconciler.providers.base import InvokeTarget, Problem, Provider, RetryAfter, Usage
from reconciler.providers.conformance import check_provider
from reconciler.providers.together import HEALTH, TogetherProvider, health

KEY = "tg_SECRETkey0123456789abcdef"
ENV = {"TOGETHER_API_KEY": KEY}
LLAMA = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
H100 = "2x_nvidia_h100_80gb_sxm"
MARK = "reconciler production/chat"


def chat(environment: str = "production", **spec: Any) -> Instance:
    return Instance(
        environment=environment,
        kind="Deployment",
        name="chat",
        provider="together",
        spec={
            "provider": "together",
            "model": LLAMA,
            "scaling": {"minReplicas": 1, "maxReplicas": 2, "hardware": H100},
            "env": {},
            "enabled": True,
            "risk": "low",
            **spec,
        },
    )


@pytest.fixture
def api() -> Iterator[FakeTogether]:
    with FakeTogether(KEY, steps=3) as server:
        yield server


@pytest.fixture
def make() -> Iterator[Made[TogetherProvider]]:
    m = Made(
        TogetherProvider,
        "together",
        "together",
        lambda url: {"baseUrl": url, "timeoutSeconds": 2},
        {"tokenEnv": "TOGETHER_API_KEY"},
        ENV,
    )
    yield m
    m.close()


def settle(p: Provider, ident: str) -> str:
    for _ in range(20):
        h = p.status("Deployment", "chat", "production", ident).health
        if h != "Progressing":
            return h
    raise AssertionError("still Progressing after 20 polls")


def test_the_contract(api: FakeTogether, make: Made[TogetherProvider]) -> None:
    second = chat(scaling={"minReplicas": 2, "maxReplicas": 4, "hardware": H100})
    check_provider(lambda: make(api.url), chat(), second, settle=settle)
    assert api.endpoints() == []


def test_create_posts_once_and_readiness_takes_several_polls(
    api: FakeTogether, make: Made[TogetherProvider]
) -> None:
    p = make(api.url)
    ident = p.create(chat(together={"inactiveTimeout": 60}))
    assert ident.startswith("endpoint-")
    post = next(r for r in api.requests if r.method == "POST")
    assert post.body == {
        "display_name": MARK,
        "model": LLAMA,
        "hardware": H100,
        "autoscaling": {"min_replicas": 1, "max_replicas": 2},
        "state": "STARTED",
        "inactive_timeout": 60,
    }
    seen = [p.status("Deployment", "chat", "production", ident) for _ in range(3)]
    assert [s.health for s in seen] == ["Progressing", "Progressing", "Healthy"]
    assert seen[0].message.startswith("STARTING (acme/")
    before = api.writes()
    assert p.create(chat(together={"inactiveTimeout": 60})) == ident
    p.update(chat(together={"inactiveTimeout": 60}), ident)
    assert api.writes() == before, "nothing differs: nothing written"


def test_health_mapping_covers_every_state() -> None:
    assert set(HEALTH) == {"PENDING", "STARTING", "STARTED", "STOPPING", "STOPPED", "ERROR"}
    assert health("STARTED") == "Healthy" and health("ERROR") == "Degraded"
    assert health("STOPPED") == "Suspended" and health("SOMETHING_NEW") == "Progressing"


def test_a_failed_start_is_degraded(api: FakeTogether, make: Made[TogetherProvider]) -> None:
    p = make(api.url)
    api.fail_next_deploy()
    ident = p.create(chat())
    assert settle(p, ident) == "Degraded"


def test_update_patches_what_differs_and_disabled_is_stopped(
    api: FakeTogether, make: Made[TogetherProvider]
) -> None:
    p = make(api.url)
    ident = p.create(chat())
    settle(p, ident)
    p.update(chat(scaling={"minReplicas": 1, "maxReplicas": 4, "hardware": H100}), ident)
    p.update(
        chat(scaling={"minReplicas": 1, "maxReplicas": 4, "hardware": H100}, enabled=False), ident
    )
    bodies = [r.body for r in api.requests if r.method == "PATCH"]
    assert bodies == [{"autoscaling": {"min_replicas": 1, "max_replicas": 4}}, {"state": "STOPPED"}]
    assert settle(p, ident) == "Suspended"
    off = chat(scaling={"minReplicas": 1, "maxReplicas": 4, "hardware": H100}, enabled=False)
    live = p.read("Deployment", "chat", "production", ident)
    assert live is not None and p.live_body(live, off.body()) == off.body()
    p.update(chat(scaling={"minReplicas": 1, "maxReplicas": 4, "hardware": H100}), ident)
    assert [r.body for r in api.requests if r.method == "PATCH"][-1] == {"state": "STARTED"}
    assert settle(p, ident) == "Healthy"


def test_model_and_hardware_are_replacements(
    api: FakeTogether, make: Made[TogetherProvider]
) -> None:
    reasons = TogetherProvider.replace_reasons()
    assert {"model", "scaling.hardware", "together.availabilityZone"} <= set(reasons)
    p = make(api.url)
    ident = p.create(chat())
    bigger = chat(
        scaling={"minReplicas": 1, "maxReplicas": 2, "hardware": "4x_nvidia_h100_80gb_sxm"}
    )
    with pytest.raises(ProviderError, match="a hardware change is a replace"):
        p.update(bigger, ident)
    # What apply does for a replace: delete, then create (a new id).
    p.delete("Deployment", "chat", "production", ident)
    new = p.create(bigger)
    assert new != ident and api.endpoint(ident) is None
    assert api.endpoint(new)["hardware"] == "4x_nvidia_h100_80gb_sxm"  # type: ignore[index]


def test_the_api_refuses_an_immutable_change(
    api: FakeTogether, make: Made[TogetherProvider]
) -> None:
    p = make(api.url)
    ident = p.create(chat())
    client = p.http()
    with pytest.raises(ProviderError, match="hardware cannot be updated"):
        client.request("PATCH", f"endpoints/{ident}", json={"hardware": "4x_nvidia_h100_80gb_sxm"})


def test_a_lost_create_answer_is_found_by_display_name(
    api: FakeTogether, make: Made[TogetherProvider]
) -> None:
    p = make(api.url)
    api.fail_next(LOST, method="POST")
    with pytest.raises(ProviderError, match="not retried"):
        p.create(chat())
    ident = p.create(chat())
    assert api.creates == {MARK: 1}
    assert [e["id"] for e in api.endpoints()] == [ident]


def test_429_is_waited_out_and_a_health_poll_hands_it_back(
    api: FakeTogether, make: Made[TogetherProvider]
) -> None:
    p = make(api.url)
    api.fail_next(429, times=2, retry_after=5, method="POST")
    ident = p.create(chat())
    assert make.sleeps == [5, 5]
    api.fail_next(429, retry_after=9, method="GET")
    with pytest.raises(RetryAfter) as e:
        p.status("Deployment", "chat", "production", ident)
    assert e.value.seconds == 9


def test_ownership_by_display_name(api: FakeTogether, make: Made[TogetherProvider]) -> None:
    theirs = api.create_by_hand(
        {
            "display_name": "Llama for the demo",
            "model": LLAMA,
            "hardware": H100,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        }
    )
    p = make(api.url)
    with pytest.raises(ProviderError, match=r"reconciler did not make it.*nothing was changed"):
        p.update(chat(), theirs)
    with pytest.raises(ProviderError, match="reconciler did not make it"):
        p.delete("Deployment", "chat", "production", theirs)
    staging = api.create_by_hand(
        {
            "display_name": "reconciler staging/chat",
            "model": LLAMA,
            "hardware": H100,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        }
    )
    with pytest.raises(ProviderError, match=r"it is not deployment\.chat in 'production'"):
        p.update(chat(), staging)
    assert api.writes() == [], "nothing was written"
    ident = p.create(chat())  # the others are left alone: a new one of its own
    assert ident not in (theirs, staging)
    api.create_by_hand({**api.endpoint(ident), "display_name": MARK})  # type: ignore[dict-item]
    with pytest.raises(ProviderError, match="2 dedicated endpoints are named"):
        p.create(chat())


def test_drift_in_the_manifests_names(api: FakeTogether, make: Made[TogetherProvider]) -> None:
    p = make(api.url)
    inst = chat(together={"inactiveTimeout": 30})
    ident = p.create(inst)
    settle(p, ident)
    api.tamper(ident, "autoscaling.max_replicas", 8)
    api.tamper(ident, "inactive_timeout", 0)
    live = p.read("Deployment", "chat", "production", ident)
    assert live is not None
    body = inst.body()
    diff = {d.path: (d.before, d.after) for d in field_diff(body, p.live_body(live, body))}
    assert diff == {"scaling.maxReplicas": (2, 8), "together.inactiveTimeout": (30, 0)}
    p.update(inst, ident)
    live = p.read("Deployment", "chat", "production", ident)
    assert live is not None and not field_diff(body, p.live_body(live, body))
    api.tamper(ident, "state", "STOPPED")  # stopped by hand, no idle timeout to explain it
    plain = chat()
    live = p.read("Deployment", "chat", "production", ident)
    assert live is not None
    diff = {
        d.path: (d.before, d.after)
        for d in field_diff(plain.body(), p.live_body(live, plain.body()))
    }
    assert diff == {"enabled": (True, False)}


def test_gone_is_missing_and_update_says_heal(
    api: FakeTogether, make: Made[TogetherProvider]
) -> None:
    p = make(api.url)
    ident = p.create(chat())
    p.delete("Deployment", "chat", "production", ident)
    assert p.status("Deployment", "chat", "production", ident).health == "Missing"
    with pytest.raises(ProviderError, match="drift --heal"):
        p.update(chat(), ident)


def test_no_key_in_errors(api: FakeTogether, make: Made[TogetherProvider]) -> None:
    p = make(api.url, env={"TOGETHER_API_KEY": KEY + "x"})
    with pytest.raises(ProviderError) as e:
        p.create(chat())
    text = str(e.value)
    assert KEY not in text and "401" in text and "Invalid API key provided" in text
    assert "TOGETHER_API_KEY" in text


def test_validate_names_each_problem_and_where(make: Made[TogetherProvider]) -> None:
    p = make("http://127.0.0.1:9", retries=99)
    bad = chat(
        model="llama 3",
        options={"temperature": 0.1},
        scaling={"minReplicas": 0, "maxReplicas": 2, "hardware": "h100"},
    )
    where: dict[tuple[str | int, ...], str] = {}
    for problem in p.validate(bad):
        assert isinstance(problem, Problem)
        where[problem.field] = problem.message
    assert "config.retries" in where[("config", "retries")]
    assert "not a Together model id" in where[("model",)]
    assert "no place for `options`" in where[("options",)]
    assert "is not a hardware id such as" in where[("scaling", "hardware")]
    assert "together.inactiveTimeout" in where[("scaling", "minReplicas")]
    assert make("http://127.0.0.1:9").validate(chat()) == []


# -- running and suspending --------------------------------------------------------------------


def started(p: TogetherProvider, inst: Instance) -> str:
    ident = p.create(inst)
    assert settle(p, ident) == "Healthy"
    return ident


def target(ident: str, inst: Instance | None = None) -> InvokeTarget:
    inst = inst or chat()
    return InvokeTarget(inst.environment, inst.name, ident, inst.body())


def test_the_contract_with_a_run(api: FakeTogether, make: Made[TogetherProvider]) -> None:
    second = chat(scaling={"minReplicas": 2, "maxReplicas": 4, "hardware": H100})
    check_provider(
        lambda: make(api.url),
        chat(),
        second,
        settle=settle,
        invoke_input={"messages": [{"role": "user", "content": "hello there"}]},
    )


def test_a_run_is_a_chat_completion_on_the_endpoints_name(
    api: FakeTogether, make: Made[TogetherProvider]
) -> None:
    p = make(api.url)
    ident = started(p, chat())
    got = p.invoke(target(ident), {"question": "why?"}, 60.0)
    assert got.output == 'echo: {"question": "why?"}'
    assert got.usage == Usage(2, 3) and got.latency >= 0
    (req,) = [r for r in api.requests if r.path == "/v1/chat/completions"]
    name = api.endpoint(ident)["name"]  # type: ignore[index]
    assert req.body == {
        "model": name,
        "messages": [{"role": "user", "content": '{"question": "why?"}'}],
    }


def test_a_failed_run_is_sent_once_and_says_why(
    api: FakeTogether, make: Made[TogetherProvider]
) -> None:
    p = make(api.url)
    ident = started(p, chat())
    api.fail_next(500, body={"error": {"message": "model crashed"}}, path="/v1/chat/completions")
    with pytest.raises(ProviderError, match=r"500.*model crashed") as e:
        p.invoke(target(ident), {"q": "x"}, 60.0)
    assert KEY not in e.value.message
    assert len([r for r in api.requests if r.path == "/v1/chat/completions"]) == 1


def test_a_stopped_or_foreign_endpoint_is_not_called(
    api: FakeTogether, make: Made[TogetherProvider]
) -> None:
    p = make(api.url)
    ident = started(p, chat())
    api.tamper(ident, "state", "STOPPED")
    with pytest.raises(ProviderError, match="is STOPPED: it answers only when STARTED"):
        p.invoke(target(ident), {"q": "x"}, 60.0)
    api.tamper(ident, "display_name", "someone else's")
    with pytest.raises(ProviderError, match="reconciler did not make it"):
        p.invoke(target(ident), {"q": "x"}, 60.0)
    assert not [r for r in api.requests if r.path == "/v1/chat/completions"]


def test_suspended_stops_the_endpoint_and_lifting_it_starts_it(
    api: FakeTogether, make: Made[TogetherProvider]
) -> None:
    p = make(api.url)
    ident = started(p, chat())
    p.update(chat(suspended=True), ident)
    patch = [r for r in api.requests if r.method == "PATCH"][-1]
    assert patch.body == {"state": "STOPPED"}
    assert settle(p, ident) == "Suspended"
    live = p.read("Deployment", "chat", "production", ident)
    assert live is not None
    recorded = chat(suspended=True).body()
    assert not field_diff(recorded, p.live_body(live, recorded))
    api.tamper(ident, "state", "STARTED")  # started again by hand
    live = p.read("Deployment", "chat", "production", ident)
    assert live is not None
    (d,) = field_diff(recorded, p.live_body(live, recorded))
    assert (d.path, d.before, d.after) == ("suspended", True, False)
    api.tamper(ident, "state", "STOPPED")
    p.update(chat(), ident)
    assert [r for r in api.requests if r.method == "PATCH"][-1].body == {"state": "STARTED"}
    assert settle(p, ident) == "Healthy"


def test_suspended_from_the_start_creates_it_stopped(
    api: FakeTogether, make: Made[TogetherProvider]
) -> None:
    p = make(api.url)
    assert p.validate(chat(suspended=True)) == []
    ident = p.create(chat(suspended=True))
    post = next(r for r in api.requests if r.method == "POST")
    assert post.body["state"] == "STOPPED"
    assert p.status("Deployment", "chat", "production", ident).health == "Suspended"
