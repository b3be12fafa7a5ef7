"""The modal provider against a Modal control-plane stand-in on 127.0.0.1
(tests/fakes/modal.py, a gRPC server on the SDK's own servicer base class) through the
real `modal` SDK: adoption by tag, the autoscaler settings, readiness from the app's
state, drift, ownership, delete as stopping the app, throttling, and no credential in
any error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("modal", reason="the modal extra is not installed")

from fakes.modal import FakeModal

from reconciler.errors import ProviderError
from reconciler.instances import Instance, ProviderConfig
from reconciler.plan import field_diff
from reconciler.providers.base import Problem
from reconciler.providers.conformance import check_provider
from reconciler.providers.modal import WHY, ModalProvider

TOKEN_ID = "ak-reconcilerTEST0001"
SECRET = "as-SECRETsecret0123456789abcdef"
ENV = {"MODAL_TOKEN_ID": TOKEN_ID, "MODAL_TOKEN_SECRET": SECRET}
CREDS = {"tokenIdEnv": "MODAL_TOKEN_ID", "tokenSecretEnv": "MODAL_TOKEN_SECRET"}


def chat(environment: str = "production", name: str = "chat", **spec: Any) -> Instance:
    modal = {"app": "chat-app", "function": "serve", "scaledownWindow": 300}
    modal.update(spec.pop("modal", {}))
    return Instance(
        environment=environment,
        kind="Deployment",
        name=name,
        provider="md",
        spec={
            "provider": "md",
            "model": "llama-3-8b",
            "scaling": {"minReplicas": 1, "maxReplicas": 4},
            "env": {},
            "enabled": True,
            "risk": "high",
            "modal": modal,
            **spec,
        },
    )


@pytest.fixture
def md() -> Iterator[FakeModal]:
    with FakeModal(TOKEN_ID, SECRET) as server:
        server.deploy("chat-app", {"serve": {"max_containers": 2}, "embed": {}})
        yield server


class Made:
    def __init__(self) -> None:
        self.made: list[ModalProvider] = []

    def __call__(self, url: str, env: dict[str, str] | None = None, **config: Any) -> ModalProvider:
        p = ModalProvider(
            ProviderConfig(
                "md",
                "modal",
                "production",
                {"serverUrl": url, "timeoutSeconds": 10, **config},
                dict(CREDS),
            ),
            repo_root=Path("."),
            env=ENV if env is None else env,
        )
        self.made.append(p)
        return p


@pytest.fixture
def make() -> Iterator[Made]:
    m = Made()
    yield m
    for p in m.made:
        p.close()


def drift(p: ModalProvider, inst: Instance, pid: str) -> dict[str, tuple[Any, Any]]:
    live = p.read("Deployment", inst.name, inst.environment, pid)
    assert live is not None
    body = inst.body()
    seen = p.live_body(live, body)
    return {d.path: (d.before, d.after) for d in field_diff(body, {k: seen.get(k) for k in body})}


def test_the_provider_keeps_the_contract(md: FakeModal, make: Made) -> None:
    second = chat(scaling={"minReplicas": 0, "maxReplicas": 8}, modal={"bufferContainers": 1})
    check_provider(lambda: make(md.url), chat(), second)
    app = md.app("chat-app")
    assert app is not None and app.state == 5  # APP_STATE_STOPPED: deleting stopped it


def test_create_adopts_the_deployed_function_marks_its_app_and_sets_the_autoscaler(
    md: FakeModal, make: Made
) -> None:
    p = make(md.url)
    pid = p.create(chat())
    app = md.app("chat-app")
    assert app is not None
    assert pid == f"/chat-app/serve/{app.app_id}"
    assert app.tags == {"reconciler.serve": "production.chat"}
    assert md.function("chat-app", "serve").current() == {
        "min_containers": 1,
        "max_containers": 4,
        "buffer_containers": 0,
        "scaledown_window": 300,
    }
    assert md.function("chat-app", "embed").override == {}, "only the named function"
    assert md.writes() == ["AppSetTags", "FunctionUpdateSchedulingParams"]
    assert p.create(chat()) == pid
    assert md.writes() == ["AppSetTags", "FunctionUpdateSchedulingParams"], (
        "adopting again writes nothing when nothing differs"
    )
    assert p.status("Deployment", "chat", "production", pid).health == "Healthy"
    assert drift(p, chat(), pid) == {}


def test_a_field_left_out_is_neither_sent_nor_compared(md: FakeModal, make: Made) -> None:
    p = make(md.url)
    inst = chat(scaling=None, modal={"scaledownWindow": None, "bufferContainers": 2})
    pid = p.create(inst)
    fn = md.function("chat-app", "serve")
    assert fn.override == {"buffer_containers": 2}
    md.tamper("chat-app", "serve", min_containers=3)
    assert drift(p, inst, pid) == {}


def test_tokens_are_checked_and_never_shown(md: FakeModal, make: Made) -> None:
    bad = {"MODAL_TOKEN_ID": TOKEN_ID, "MODAL_TOKEN_SECRET": "as-WRONGsecret0123456789"}
    with pytest.raises(ProviderError) as e:
        make(md.url, env=bad).create(chat())
    text = str(e.value)
    assert "refused the token" in text and "MODAL_TOKEN_SECRET" in text
    assert "WRONGsecret" not in text and SECRET not in text
    with pytest.raises(ProviderError, match="MODAL_TOKEN_ID is not set"):
        make(md.url, env={"MODAL_TOKEN_SECRET": SECRET}).create(chat())
    assert md.writes() == []


def test_an_app_not_deployed_or_without_the_function_is_a_clear_error(
    md: FakeModal, make: Made
) -> None:
    p = make(md.url)
    with pytest.raises(ProviderError, match=r"no deployed Modal app 'other'.*`modal deploy`"):
        p.create(chat(modal={"app": "other"}))
    with pytest.raises(ProviderError, match=r"has no function 'generate' \(it has: embed, serve\)"):
        p.create(chat(modal={"function": "generate"}))
    with pytest.raises(ProviderError, match="no deployed Modal app 'chat-app' in environment"):
        p.create(chat(modal={"environment": "staging"}))
    assert md.writes() == []


def test_the_modal_environment_comes_from_the_block_else_the_config(
    md: FakeModal, make: Made
) -> None:
    md.deploy("chat-app", {"serve": {}}, environment="staging")
    pid = make(md.url, environment="staging").create(chat())
    staging = md.app("chat-app", "staging")
    assert staging is not None and pid == f"staging/chat-app/serve/{staging.app_id}"
    assert staging.tags and not (md.app("chat-app") or staging).tags


def test_a_function_another_deployment_manages_is_refused(md: FakeModal, make: Made) -> None:
    p = make(md.url)
    p.create(chat(environment="staging", name="chat-staging"))
    with pytest.raises(ProviderError) as e:
        p.create(chat())
    assert "managed by staging deployment.chat-staging" in str(e.value)
    assert "nothing was changed" in str(e.value)
    assert md.writes() == ["AppSetTags", "FunctionUpdateSchedulingParams"]


def test_readiness_is_the_apps_state(md: FakeModal, make: Made) -> None:
    p = make(md.url)
    pid = p.create(chat())
    app = md.app("chat-app")
    assert app is not None
    app.state = 6  # APP_STATE_INITIALIZING: a deploy in progress
    assert p.status("Deployment", "chat", "production", pid).health == "Progressing"
    app.state = 7  # APP_STATE_DISABLED
    s = p.status("Deployment", "chat", "production", pid)
    assert (s.health, s.message) == ("Degraded", "Modal has disabled the app")
    app.state = 3
    md.stop_after_next_update()
    p.update(chat(scaling={"minReplicas": 2, "maxReplicas": 4}), pid)
    s = p.status("Deployment", "chat", "production", pid)
    assert (s.health, s.message) == ("Degraded", WHY["stopped"])


def test_drift_shows_a_hand_change_and_a_redeploy_and_update_heals_it(
    md: FakeModal, make: Made
) -> None:
    p = make(md.url)
    pid = p.create(chat())
    md.tamper("chat-app", "serve", min_containers=0, scaledown_window=60)
    assert drift(p, chat(), pid) == {
        "scaling.minReplicas": (1, 0),
        "modal.scaledownWindow": (300, 60),
    }
    p.update(chat(), pid)
    assert drift(p, chat(), pid) == {}
    md.deploy("chat-app", {"serve": {"max_containers": 2}})  # resets the overrides
    assert drift(p, chat(), pid) == {
        "scaling.minReplicas": (1, 0),
        "scaling.maxReplicas": (4, 2),
        "modal.scaledownWindow": (300, 60),
    }
    p.update(chat(), pid)
    assert drift(p, chat(), pid) == {}


def test_an_app_stopped_and_deployed_anew_is_not_the_recorded_one(
    md: FakeModal, make: Made
) -> None:
    p = make(md.url)
    pid = p.create(chat())
    app = md.app("chat-app")
    assert app is not None
    app.state = 5  # `modal app stop`
    md.deploy("chat-app", {"serve": {}})  # then `modal deploy`: a new app id
    assert p.read("Deployment", "chat", "production", pid) is None
    with pytest.raises(ProviderError, match="drift --heal"):
        p.update(chat(), pid)
    p.delete("Deployment", "chat", "production", pid)
    new = md.app("chat-app")
    assert new is not None and new.state == 3, "the new app is not stopped"
    assert p.create(chat()) == f"/chat-app/serve/{new.app_id}", "a heal adopts the new app"


def test_delete_lets_go_while_another_deployment_manages_a_function_of_the_app(
    md: FakeModal, make: Made
) -> None:
    p = make(md.url)
    chat_pid = p.create(chat())
    embed = chat(name="embed", modal={"function": "embed"})
    p.create(embed)
    p.delete("Deployment", "chat", "production", chat_pid)
    app = md.app("chat-app")
    assert (
        app is not None and app.state == 3 and app.tags == {"reconciler.embed": "production.embed"}
    )
    p.delete("Deployment", "embed", "production", chat_pid.replace("serve", "embed"))
    assert app.state == 5, "the last one stops the app"


def test_delete_of_a_function_someone_else_now_manages_is_refused(
    md: FakeModal, make: Made
) -> None:
    p = make(md.url)
    pid = p.create(chat())
    app = md.app("chat-app")
    assert app is not None
    app.tags = {"reconciler.serve": "staging.other"}
    with pytest.raises(ProviderError, match=r"managed by staging deployment\.other"):
        p.delete("Deployment", "chat", "production", pid)
    assert app.state == 3


def test_throttling_is_waited_out_by_the_sdk_within_the_deadline(md: FakeModal, make: Made) -> None:
    p = make(md.url)
    md.throttle_next(0.05, "FunctionUpdateSchedulingParams", times=2)
    pid = p.create(chat())
    assert md.calls.count("FunctionUpdateSchedulingParams") == 3
    assert drift(p, chat(), pid) == {}
    slow = make(md.url, timeoutSeconds=0.5)
    md.throttle_next(30, "AppGetOrCreate")
    with pytest.raises(ProviderError, match=r"no answer within 0.5 s \(config.timeoutSeconds\)"):
        slow.read("Deployment", "chat", "production", pid)


def test_what_modal_refuses_is_its_own_words(md: FakeModal, make: Made) -> None:
    long = "f" * 60
    md.deploy("chat-app", {"serve": {}, long: {}})
    p = make(md.url)
    inst = chat(modal={"function": long})
    assert any("not a function name" in str(x) for x in p.validate(inst))
    with pytest.raises(ProviderError, match="Modal refused it: Invalid tag key"):
        p.create(inst)


def test_plan_time_problems_are_located_and_need_no_network(make: Made) -> None:
    p = make("http://127.0.0.1:9")  # nothing listens: validate must not call out
    inst = chat(
        modal={"app": None, "function": "bad name"},
        scaling={"minReplicas": 1, "maxReplicas": 2, "hardware": "a100"},
        enabled=False,
        env={"A": "b"},
        timeoutSeconds=30,
    )
    problems = p.validate(inst)
    fields = {x.field for x in problems if isinstance(x, Problem)}
    assert {("modal",), ("modal", "function"), ("scaling", "hardware"), ("enabled",)} <= fields
    assert {("env",), ("timeoutSeconds",)} <= fields
    assert p.validate(chat()) == []
    bad = make("ftp://x", timeoutSeconds=-1, environment="en v")
    fields = {x.field for x in bad.validate(chat()) if isinstance(x, Problem)}
    assert {("config", "serverUrl"), ("config", "timeoutSeconds"), ("config", "environment")} <= (
        fields
    )


def test_the_plan_says_deleting_stops_the_whole_app() -> None:
    config = ProviderConfig("md", "modal", "production", {}, dict(CREDS))
    rule = ModalProvider.delete_rule(config, "Deployment", "chat", chat().body())
    assert rule.refused is None
    assert rule.note and "stops Modal app 'chat-app'" in rule.note
    assert "every function in it" in rule.note
