"""The langfuse provider against a Langfuse stand-in on 127.0.0.1 (tests/fakes/langfuse.py):
a deployment is a prompt version, its environment a label; content is found before a
version is made (every POST makes one); labels move; drift, deletes, 429s, lost answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.langfuse import FakeLangfuse
from fakes.loopback import LOST
from vendor_world import FakeTime, Made

from reconciler.errors import ProviderError
from reconciler.instances import Instance, ProviderConfig
from reconciler.plan import field_diff
from reconciler.providers.base import Problem
from reconciler.providers.langfuse import LangfuseProvider

PUBLIC, SECRET = "pk-lf-1234", "sk-lf-SECRET-5678"
ENV = {"LANGFUSE_PUBLIC_KEY": PUBLIC, "LANGFUSE_SECRET_KEY": SECRET}
CREDENTIALS = {"publicKeyEnv": "LANGFUSE_PUBLIC_KEY", "secretKeyEnv": "LANGFUSE_SECRET_KEY"}


def chat(
    environment: str = "production",
    *,
    template: str = "You help with {{product}}.",
    version: str = "1.1.0",
    temperature: float = 0.2,
    **spec: Any,
) -> Instance:
    return Instance(
        environment=environment,
        kind="Deployment",
        name="support-chat",
        provider="prompts",
        spec={
            "provider": "prompts",
            "model": "gpt-4o",
            "prompt": {"name": "support", "version": version, "template": template},
            "options": {"temperature": temperature, "maxTokens": 400},
            "env": {},
            "enabled": True,
            "risk": "medium",
            "langfuse": {"promptName": "support/agent"},
            **spec,
        },
    )


@pytest.fixture
def lf() -> Iterator[FakeLangfuse]:
    with FakeLangfuse(PUBLIC, SECRET) as server:
        yield server


@pytest.fixture
def make() -> Iterator[Made[LangfuseProvider]]:
    m = Made(
        LangfuseProvider,
        "prompts",
        "langfuse",
        lambda url: {"host": url},
        CREDENTIALS,
        ENV,
    )
    yield m
    m.close()


def test_create_makes_one_version_labelled_for_the_environment(
    lf: FakeLangfuse, make: Made
) -> None:
    p = make(lf.url)
    pid = p.create(chat())
    assert pid == "support/agent|production"
    (v,) = lf.versions("support/agent")
    assert v["prompt"] == "You help with {{product}}."
    assert v["config"] == {"model": "gpt-4o", "temperature": 0.2, "max_tokens": 400}
    assert v["labels"] == ["latest", "production"]
    assert "support@1.1.0" in v["commitMessage"]
    # the folder name travels URL-encoded, as Langfuse asks
    assert any("support%2Fagent" in r.path or "support/agent" in r.path for r in lf.requests)
    assert p.create(chat()) == pid, "applying again changes nothing"
    assert lf.posts == {"support/agent": 1}
    assert p.status("Deployment", "support-chat", "production", pid).health == "Healthy"


def test_an_environment_reuses_the_version_another_made(lf: FakeLangfuse, make: Made) -> None:
    """Promotion: staging and production with the same content share one version."""
    make(lf.url, "staging").create(chat("staging"))
    make(lf.url).create(chat())
    (v,) = lf.versions("support/agent")
    assert v["labels"] == ["latest", "production", "staging"]
    assert lf.posts == {"support/agent": 1}


def test_update_moves_the_label_and_goes_back_without_a_new_version(
    lf: FakeLangfuse, make: Made
) -> None:
    staging, production = make(lf.url, "staging"), make(lf.url)
    staging.create(chat("staging"))
    pid = production.create(chat())
    production.update(chat(temperature=0.5), pid)
    v1, v2 = lf.versions("support/agent")
    assert v1["labels"] == ["staging"] and v2["labels"] == ["latest", "production"]
    assert v2["config"]["temperature"] == 0.5
    production.update(chat(), pid)  # back to the first content: found, not made again
    assert lf.posts == {"support/agent": 2}
    assert lf.prompt("support/agent", label="production")["version"] == 1
    patches = [r for r in lf.requests if r.method == "PATCH"]
    assert patches[-1].path.endswith("/versions/1") and patches[-1].body == {
        "newLabels": ["production"]
    }


def test_chat_type_puts_the_template_in_one_system_message(lf: FakeLangfuse, make: Made) -> None:
    inst = chat(langfuse={"promptName": "support-chat-msgs", "type": "chat"})
    p = make(lf.url)
    pid = p.create(inst)
    (v,) = lf.versions("support-chat-msgs")
    assert v["type"] == "chat"
    assert v["prompt"] == [{"role": "system", "content": "You help with {{product}}."}]
    live = p.read("Deployment", "support-chat", "production", pid)
    assert live is not None and p.live_body(live, inst.body()) == inst.body()


def test_a_prompt_keeps_its_type(lf: FakeLangfuse, make: Made) -> None:
    p = make(lf.url)
    p.create(chat())
    with pytest.raises(ProviderError) as e:
        p.create(chat(template="other", langfuse={"promptName": "support/agent", "type": "chat"}))
    assert "different prompt type" in e.value.message and "prompts" in e.value.message


def test_a_lost_answer_to_post_is_found_on_the_next_run(lf: FakeLangfuse, make: Made) -> None:
    p = make(lf.url)
    lf.fail_next(LOST, method="POST")
    with pytest.raises(ProviderError) as e:
        p.create(chat())
    assert "not retried" in e.value.message
    assert p.create(chat()) == "support/agent|production"
    assert lf.posts == {"support/agent": 1}, "the version made by the lost POST was reused"


def test_a_concurrent_version_409_looks_again_and_makes_only_one(
    lf: FakeLangfuse, make: Made
) -> None:
    conflict = {
        "message": "A prompt version was created concurrently. Please retry.",
        "error": "LangfuseConflictError",
    }
    lf.fail_next(409, 2, method="POST", body=conflict)
    p = make(lf.url)
    assert p.create(chat()) == "support/agent|production"
    assert lf.posts == {"support/agent": 1}
    assert [r.method for r in lf.requests].count("POST") == 3
    lf.fail_next(409, 10, method="POST", body=conflict)
    with pytest.raises(ProviderError) as e:
        p.create(chat(temperature=0.9))
    assert "kept answering 409" in e.value.message


def test_rate_limited_requests_wait_as_told(lf: FakeLangfuse, make: Made) -> None:
    p = make(lf.url)
    lf.fail_next(429, 2, retry_after=3, body={"message": "Rate limit exceeded"})
    p.create(chat())
    assert make.sleeps == [3.0, 3.0]
    assert len(lf.versions("support/agent")) == 1


def test_drift_a_label_moved_in_the_ui_shows_as_field_changes(lf: FakeLangfuse, make: Made) -> None:
    p = make(lf.url)
    old = chat()
    pid = p.create(old)
    p.create(chat(template="Be brief.", temperature=0.9))  # another version, label on it
    lf.move_label("support/agent", "production", 1)  # back to the recorded content
    live = p.read("Deployment", "support-chat", "production", pid)
    assert live is not None and field_diff(old.body(), p.live_body(live, old.body())) == []
    lf.move_label("support/agent", "production", 2)  # someone moved it in the UI
    live = p.read("Deployment", "support-chat", "production", pid)
    assert live is not None
    diff = {
        d.path: (d.before, d.after) for d in field_diff(old.body(), p.live_body(live, old.body()))
    }
    assert diff == {
        "options.temperature": (0.2, 0.9),
        "prompt.template": ("You help with {{product}}.", "Be brief."),
    }
    lf.edit("support/agent", 2, config={"model": "gpt-4o-mini", "response_format": "json"})
    live = p.read("Deployment", "support-chat", "production", pid)
    assert live is not None
    paths = {d.path for d in field_diff(old.body(), p.live_body(live, old.body()))}
    assert {"model", "options.maxTokens", "langfuse.config"} <= paths


def test_status_and_read_when_the_label_is_nowhere(lf: FakeLangfuse, make: Made) -> None:
    p = make(lf.url)
    assert p.read("Deployment", "support-chat", "production", "support/agent|production") is None
    s = p.status("Deployment", "support-chat", "production", "support/agent|production")
    assert s.health == "Missing" and "production" in s.message


def test_delete_is_refused_unless_configured_and_never_takes_other_labels(
    lf: FakeLangfuse, make: Made
) -> None:
    pid = make(lf.url).create(chat())
    with pytest.raises(ProviderError) as e:
        make(lf.url).delete("Deployment", "support-chat", "production", pid)
    assert "cannot take label 'production' off" in e.value.message
    deleting = make(lf.url, onDelete="delete-version")
    make(lf.url, "staging").create(chat("staging"))  # the same version: shared
    with pytest.raises(ProviderError) as e:
        deleting.delete("Deployment", "support-chat", "production", pid)
    assert "also carries label(s) staging" in e.value.message
    assert len(lf.versions("support/agent")) == 1, "nothing was deleted"
    make(lf.url, "staging").update(chat("staging", temperature=0.7), "support/agent|staging")
    deleting.delete("Deployment", "support-chat", "production", pid)
    assert [v["labels"] for v in lf.versions("support/agent")] == [["latest", "staging"]]
    deleting.delete("Deployment", "support-chat", "production", pid)  # gone: done


def test_update_of_another_prompt_or_label_is_a_replace_not_an_update(
    lf: FakeLangfuse, make: Made
) -> None:
    p = make(lf.url)
    pid = p.create(chat())
    with pytest.raises(ProviderError) as e:
        p.update(chat(langfuse={"promptName": "other"}), pid)
    assert "replace" in e.value.message
    assert lf.versions("other") == []


def test_wrong_keys_fail_with_a_hint_and_no_secret(lf: FakeLangfuse, make: Made) -> None:
    p = make(lf.url, env={**ENV, "LANGFUSE_SECRET_KEY": "sk-lf-WRONG-0000"})
    with pytest.raises(ProviderError) as e:
        p.create(chat())
    assert "401" in e.value.message and "LANGFUSE_SECRET_KEY" in e.value.message
    assert "sk-lf-WRONG-0000" not in e.value.message and SECRET not in e.value.message
    p = make(lf.url, env={"LANGFUSE_PUBLIC_KEY": PUBLIC})
    with pytest.raises(ProviderError) as e:
        p.create(chat())
    assert "LANGFUSE_SECRET_KEY is not set" in e.value.message


def test_validate_names_each_problem_and_where(make: Made) -> None:
    p = make("https://cloud.langfuse.com")
    assert p.validate(chat()) == []
    inst = chat(
        langfuse={"promptName": "a//b", "label": "Prod"},
        scaling={"minReplicas": 1, "maxReplicas": 2},
        endpoint="/x",
    )
    inst.spec.pop("prompt")
    problems = p.validate(inst)
    assert all(isinstance(x, Problem) for x in problems)
    where = {x.field: x.message for x in problems if isinstance(x, Problem)}
    assert "single '/'" in where[("langfuse",)]
    assert "lowercase" in where[("langfuse", "label")]
    assert "needs a `prompt`" in where[("prompt",)]
    assert "no place for `scaling`" in where[("scaling",)]
    assert "no place for `endpoint`" in where[("endpoint",)]
    bad = make("ftp://x", retries=99, label="latest")
    bad.config.credentials.pop("secretKeyEnv")
    fresh = LangfuseProvider(bad.config, repo_root=Path("."), env=ENV)
    on_provider = {
        x.field for x in fresh.validate(chat()) if isinstance(x, Problem) and x.on == "provider"
    }
    assert on_provider == {
        ("config", "host"),
        ("config", "retries"),
        ("config", "label"),
        ("credentials", "secretKeyEnv"),
    }
    sched = Instance("production", "Schedule", "nightly", "prompts", {"cron": "0 2 * * *"})
    assert "no schedules" in str(p.validate(sched))


def test_delete_rule_refuses_by_default_and_explains_delete_version() -> None:
    config = ProviderConfig("prompts", "langfuse", "dev", {"host": "https://x"}, CREDENTIALS)
    rule = LangfuseProvider.delete_rule(config, "Deployment", "support-chat", chat().body())
    assert rule.refused and "label 'dev'" in rule.refused and "onDelete" in rule.refused
    config = ProviderConfig(
        "prompts", "langfuse", "dev", {"host": "https://x", "onDelete": "delete-version"}
    )
    rule = LangfuseProvider.delete_rule(config, "Deployment", "support-chat", chat().body())
    assert rule.refused is None and rule.note and "deletes the version" in rule.note
    assert set(LangfuseProvider.replace_reasons()) == {
        "langfuse.promptName",
        "langfuse.label",
        "langfuse.type",
    }


def provider_on(lf: FakeLangfuse, t: FakeTime, **config: Any) -> LangfuseProvider:
    return LangfuseProvider(
        ProviderConfig(
            "prompts", "langfuse", "production", {"host": lf.url, **config}, CREDENTIALS
        ),
        repo_root=Path("."),
        env=ENV,
        sleep=t.sleep,
        clock=t.clock,
    )


def test_a_per_minute_rate_limit_is_waited_out_in_one_wait(lf: FakeLangfuse) -> None:
    """Langfuse asks for the rest of its minute; a wait cut to 30 s lands inside the
    window, gets another 429 and burns a retry."""
    t = FakeTime()
    lf.limit_per_minute(1, t.clock)
    p = provider_on(lf, t)
    try:
        p.create(chat())  # the minute's one write
        writes = len(lf.writes())
        p.create(chat(template="Be brief."))
    finally:
        p.close()
    assert t.sleeps == [60.0]
    assert lf.throttled == 1 and len(lf.writes()) == writes + 2  # the refused one, then it


def test_a_rate_limit_wait_past_the_budget_fails_at_once_saying_so(lf: FakeLangfuse) -> None:
    t = FakeTime()
    lf.limit_per_minute(1, t.clock)
    p = provider_on(lf, t, maxRetryWaitSeconds=45)
    try:
        p.create(chat())
        with pytest.raises(ProviderError) as e:
            p.create(chat(template="Be brief."))
    finally:
        p.close()
    assert t.sleeps == []
    assert "retrying needs a wait of 60s (the server's Retry-After: 60), over the limit" in (
        e.value.message
    )


def test_the_label_and_where_it_comes_from_are_said_for_the_plan() -> None:
    """The label defaulted to the environment's name silently, while Langfuse's SDKs
    fetch `production` when asked for none: the plan line says which label and why."""

    def note(environment: str, body: dict[str, Any], **config: Any) -> str | None:
        pc = ProviderConfig(
            "prompts", "langfuse", environment, {"host": "https://x", **config}, CREDENTIALS
        )
        return LangfuseProvider.plan_note(pc, "Deployment", "support-chat", body)

    body = chat().spec
    assert note("prod", body) == (
        "Langfuse prompt 'support/agent', label 'prod' (the environment's name, by default; "
        "Langfuse's SDKs fetch 'production' when no label is given: set langfuse.label or "
        "config.label to choose)"
    )
    assert note("production", body) == (
        "Langfuse prompt 'support/agent', label 'production' (the environment's name, by "
        "default; what Langfuse's SDKs fetch unasked)"
    )
    assert note("prod", body, label="production") == (
        "Langfuse prompt 'support/agent', label 'production' (the provider's config.label)"
    )
    labelled = {**body, "langfuse": {"promptName": "support/agent", "label": "canary"}}
    assert note("prod", labelled, label="production") == (
        "Langfuse prompt 'support/agent', label 'canary' (langfuse.label)"
    )
    assert (
        LangfuseProvider.plan_note(
            ProviderConfig("prompts", "langfuse", "prod", {}, CREDENTIALS), "Schedule", "x", {}
        )
        is None
    )


def test_the_default_label_is_still_the_environments_name(lf: FakeLangfuse, make: Made) -> None:
    """Kept for existing users: changing it would move every label they have."""
    p = make(lf.url, "staging")
    assert p.create(chat("staging")) == "support/agent|staging"
    assert lf.prompt("support/agent", label="staging") is not None
