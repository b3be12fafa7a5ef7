"""The replicate provider against a Replicate deployments stand-in on 127.0.0.1
(tests/fakes/replicate.py): the create body, PATCHes of what differs only (each is a
release), the contract, ownership without tags, the slow delete (scaled to 0, then
asked again until 15 minutes offline), 429s, drift in the manifests' names, and no
token in any error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.loopback import LOST
from fakes.replicate import MODELS, FakeReplicate
from vendor_world import FakeTime

from reconciler.errors import ProviderError
from reconciler.instances import Instance, ProviderConfig
from reconciler.plan import field_diff
from reconciler.providers.base import InvokeTarget, Problem, Usage
from reconciler.providers.conformance import check_provider
from reconciler.providers.replicate import ReplicateProvider, health

TOKEN = "r8_SECRETtoken0123456789abcdef"
ENV = {"REPLICATE_API_TOKEN": TOKEN}
V1, V2 = MODELS["stability-ai/sdxl"]


def sdxl(environment: str = "production", **spec: Any) -> Instance:
    return Instance(
        environment=environment,
        kind="Deployment",
        name="sdxl",
        provider="replicate",
        spec={
            "provider": "replicate",
            "model": "stability-ai/sdxl",
            "scaling": {"minReplicas": 1, "maxReplicas": 3, "hardware": "gpu-t4"},
            "env": {},
            "enabled": True,
            "risk": "low",
            "replicate": {"version": V1},
            **spec,
        },
    )


class Maker:
    """Providers pointed at the stand-in whose waits move the stand-in's clock."""

    def __init__(self, api: FakeReplicate) -> None:
        self.api = api
        self.sleeps: list[float] = []
        self.made: list[ReplicateProvider] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.api.advance(seconds)

    def __call__(self, env: dict[str, str] | None = None, **config: Any) -> ReplicateProvider:
        cfg = {"baseUrl": self.api.url, "owner": "acme", "timeoutSeconds": 2, **config}
        p = ReplicateProvider(
            ProviderConfig(
                "replicate", "replicate", "production", cfg, {"tokenEnv": "REPLICATE_API_TOKEN"}
            ),
            repo_root=Path("."),
            env=ENV if env is None else env,
            sleep=self.sleep,
        )
        self.made.append(p)
        return p


@pytest.fixture
def api() -> Iterator[FakeReplicate]:
    with FakeReplicate(TOKEN) as server:
        yield server


@pytest.fixture
def make(api: FakeReplicate) -> Iterator[Maker]:
    m = Maker(api)
    yield m
    for p in m.made:
        p.close()


def test_the_contract(api: FakeReplicate, make: Maker) -> None:
    first = sdxl()
    second = sdxl(
        replicate={"version": V2},
        scaling={"minReplicas": 0, "maxReplicas": 5, "hardware": "gpu-l40s"},
    )
    check_provider(lambda: make(), first, second)
    assert api.deployment("acme", "sdxl") is None


def test_create_sends_every_field_and_a_repeat_writes_nothing(
    api: FakeReplicate, make: Maker
) -> None:
    p = make()
    assert p.create(sdxl()) == "acme/sdxl"
    post = next(r for r in api.requests if r.method == "POST")
    assert post.path == "/v1/deployments"
    assert post.body == {
        "name": "sdxl",
        "model": "stability-ai/sdxl",
        "version": V1,
        "hardware": "gpu-t4",
        "min_instances": 1,
        "max_instances": 3,
    }
    before = api.writes()
    assert p.create(sdxl()) == "acme/sdxl"  # adopted: ours, nothing differs
    p.update(sdxl(), "acme/sdxl")
    assert api.writes() == before, "an unchanged deployment gets no new release"
    assert api.deployment("acme", "sdxl")["current_release"]["number"] == 1  # type: ignore[index]
    assert p.status("Deployment", "sdxl", "production", "acme/sdxl").health == "Healthy"


def test_update_patches_only_what_differs(api: FakeReplicate, make: Maker) -> None:
    p = make()
    p.create(sdxl())
    p.update(sdxl(replicate={"version": V2}), "acme/sdxl")
    patch = [r for r in api.requests if r.method == "PATCH"]
    assert [r.body for r in patch] == [{"version": V2}]
    release = api.deployment("acme", "sdxl")["current_release"]  # type: ignore[index]
    assert release["number"] == 2 and release["version"] == V2


def test_disabled_is_zero_instances_and_suspended(api: FakeReplicate, make: Maker) -> None:
    p = make()
    p.create(sdxl())
    p.update(sdxl(enabled=False), "acme/sdxl")
    config = api.deployment("acme", "sdxl")["current_release"]["configuration"]  # type: ignore[index]
    assert (config["min_instances"], config["max_instances"]) == (0, 0)
    status = p.status("Deployment", "sdxl", "production", "acme/sdxl")
    assert status.health == "Suspended" and "offline" in status.message
    live = p.read("Deployment", "sdxl", "production", "acme/sdxl")
    assert live is not None
    body = sdxl(enabled=False).body()
    assert p.live_body(live, body) == body, "disabled and at 0: no drift"


def test_health_mapping() -> None:
    assert health(None).health == "Missing"
    assert health({"hardware": "cpu", "min_instances": 0, "max_instances": 2}).health == "Healthy"
    assert health({"hardware": "cpu", "min_instances": 0, "max_instances": 0}).health == "Suspended"


def test_a_model_change_is_a_replace_in_the_plan_and_refused_by_update(
    api: FakeReplicate, make: Maker
) -> None:
    assert "model" in ReplicateProvider.replace_reasons()
    p = make()
    p.create(sdxl())
    other = sdxl(
        model="meta/meta-llama-3-8b-instruct",
        replicate={"version": MODELS["meta/meta-llama-3-8b-instruct"][0]},
    )
    with pytest.raises(ProviderError, match="a model change is a replace"):
        p.update(other, "acme/sdxl")
    assert [m for m, _ in api.writes()] == ["POST"]


def test_a_refused_write_says_why_in_replicates_words(api: FakeReplicate, make: Maker) -> None:
    p = make()
    with pytest.raises(ProviderError, match="is not a valid hardware SKU"):
        p.create(sdxl(scaling={"minReplicas": 1, "maxReplicas": 1, "hardware": "gpu-h9000"}))
    assert api.deployment("acme", "sdxl") is None


def test_a_lost_create_answer_is_found_not_made_twice(api: FakeReplicate, make: Maker) -> None:
    p = make()
    api.fail_next(LOST, method="POST")
    with pytest.raises(ProviderError):
        p.create(sdxl())
    assert p.create(sdxl()) == "acme/sdxl"
    assert api.creates == {"sdxl": 1}


def test_429_is_waited_out_as_asked(api: FakeReplicate, make: Maker) -> None:
    p = make()
    api.fail_next(429, times=2, retry_after=7, body={"detail": "Request was throttled."})
    assert p.create(sdxl()) == "acme/sdxl"
    assert make.sleeps == [7, 7]


def test_a_429_to_a_health_poll_is_handed_back(api: FakeReplicate, make: Maker) -> None:
    from reconciler.providers.base import RetryAfter

    p = make()
    p.create(sdxl())
    api.fail_next(429, retry_after=12, method="GET")
    with pytest.raises(RetryAfter) as e:
        p.status("Deployment", "sdxl", "production", "acme/sdxl")
    assert e.value.seconds == 12


def test_ownership_without_tags(api: FakeReplicate, make: Maker) -> None:
    api.create_by_hand(
        "acme",
        {
            "name": "sdxl",
            "model": "stability-ai/sdxl",
            "version": V1,
            "hardware": "gpu-t4",
            "min_instances": 1,
            "max_instances": 1,
        },
        by="a-colleague",
    )
    p = make()
    with pytest.raises(ProviderError, match=r"made by 'a-colleague'.*nothing was changed"):
        p.create(sdxl())
    with pytest.raises(ProviderError, match="not the one recorded"):
        p.delete("Deployment", "sdxl", "production", None)
    api.create_by_hand(
        "acme",
        {
            "name": "other",
            "model": "meta/meta-llama-3-8b-instruct",
            "version": MODELS["meta/meta-llama-3-8b-instruct"][0],
            "hardware": "cpu",
            "min_instances": 0,
            "max_instances": 1,
        },
        by="acme",
    )
    with pytest.raises(ProviderError, match="runs 'meta/meta-llama-3-8b-instruct'"):
        p.create(sdxl(replicate={"version": V1, "deploymentName": "other"}))
    assert api.writes() == [], "nothing was written to either"


def test_delete_scales_to_zero_and_waits_out_the_15_minutes(
    api: FakeReplicate, make: Maker
) -> None:
    p = make(pollIntervalSeconds=60)
    p.create(sdxl())
    p.delete("Deployment", "sdxl", "production", "acme/sdxl")
    assert api.deployment("acme", "sdxl") is None
    writes = api.writes()
    assert writes[1] == ("PATCH", "/v1/deployments/acme/sdxl")
    assert [r.body for r in api.requests if r.method == "PATCH"] == [
        {"min_instances": 0, "max_instances": 0}
    ]
    assert sum(make.sleeps) == 900 and set(make.sleeps) == {60}
    assert [m for m, _ in writes].count("DELETE") == 16
    p.delete("Deployment", "sdxl", "production", "acme/sdxl")  # gone is done


def test_a_delete_that_outlasts_its_timeout_fails_and_the_next_one_goes_on(
    api: FakeReplicate, make: Maker
) -> None:
    p = make(pollIntervalSeconds=60, deleteTimeoutSeconds=300)
    p.create(sdxl())
    with pytest.raises(ProviderError) as e:
        p.delete("Deployment", "sdxl", "production", "acme/sdxl")
    assert "after 300 s at 0 instances" in str(e.value)
    assert "offline and unused for at least 15 minutes" in str(e.value)
    assert api.deployment("acme", "sdxl") is not None
    api.advance(600)
    p.delete("Deployment", "sdxl", "production", "acme/sdxl")
    assert api.deployment("acme", "sdxl") is None
    patches = [r for r in api.requests if r.method == "PATCH"]
    assert len(patches) == 1, "already at 0: not scaled again"


def test_drift_in_the_manifests_names(api: FakeReplicate, make: Maker) -> None:
    p = make()
    inst = sdxl()
    p.create(inst)
    api.tamper("acme", "sdxl", "max_instances", 10)
    api.tamper("acme", "sdxl", "version", V2)
    live = p.read("Deployment", "sdxl", "production", "acme/sdxl")
    assert live is not None
    body = inst.body()
    diff = {d.path: (d.before, d.after) for d in field_diff(body, p.live_body(live, body))}
    assert diff == {"scaling.maxReplicas": (3, 10), "replicate.version": (V1, V2)}
    p.update(inst, "acme/sdxl")  # heal
    live = p.read("Deployment", "sdxl", "production", "acme/sdxl")
    assert live is not None and not field_diff(body, p.live_body(live, body))


def test_no_token_in_errors(api: FakeReplicate, make: Maker) -> None:
    p = make(env={"REPLICATE_API_TOKEN": TOKEN + "x"})
    with pytest.raises(ProviderError) as e:
        p.create(sdxl())
    text = str(e.value)
    assert TOKEN not in text and "401" in text and "REPLICATE_API_TOKEN" in text
    with pytest.raises(ProviderError, match="REPLICATE_API_TOKEN is not set"):
        make(env={}).read("Deployment", "sdxl", "production", None)


def test_validate_names_each_problem_and_where(make: Maker) -> None:
    p = make(owner="acme org", deleteTimeoutSeconds=-1)
    bad = sdxl(
        model="sdxl:" + V1,
        prompt="support@1.0.0",
        env={"A": "b"},
        scaling={"minReplicas": 6, "maxReplicas": 30, "hardware": "GPU T4"},
        replicate={"version": "latest", "deploymentName": "SDXL"},
    )
    where: dict[tuple[str | int, ...], str] = {}
    for problem in p.validate(bad):
        assert isinstance(problem, Problem)
        where[problem.field] = problem.message
    assert "config.owner 'acme org' is not valid" in where[("config", "owner")]
    assert "deleteTimeoutSeconds" in where[("config", "deleteTimeoutSeconds")]
    assert "is not a Replicate model: owner/name" in where[("model",)]
    assert "no place for `prompt`" in where[("prompt",)]
    assert "no place for `env`" in where[("env",)]
    assert "not a version id" in where[("replicate", "version")]
    assert "not a deployment name" in where[("replicate", "deploymentName")]
    assert "not a Replicate hardware SKU" in where[("scaling", "hardware")]
    assert "min_instances 0 to 5" in where[("scaling", "minReplicas")]
    assert "up to 20" in where[("scaling", "maxReplicas")]
    good = make()
    assert good.validate(sdxl()) == []
    missing = sdxl(replicate={})
    assert [p.field for p in good.validate(missing) if isinstance(p, Problem)] == [("model",)]


# -- running and suspending --------------------------------------------------------------------

LLAMA_V = MODELS["meta/meta-llama-3-8b-instruct"][0]


def llama(**spec: Any) -> Instance:
    inst = sdxl(**spec)
    body = {
        **inst.spec,
        "model": "meta/meta-llama-3-8b-instruct",
        "replicate": {"version": LLAMA_V},
    }
    return Instance(inst.environment, "Deployment", "llama", "replicate", body)


def target(inst: Instance, ident: str) -> InvokeTarget:
    return InvokeTarget(inst.environment, inst.name, ident, inst.body())


def test_the_contract_with_a_run(api: FakeReplicate, make: Maker) -> None:
    check_provider(
        lambda: make(),
        sdxl(),
        sdxl(replicate={"version": V2}),
        invoke_input={"prompt": "an astronaut riding a horse"},
    )


def test_a_run_is_a_prediction_held_open_with_prefer_wait(api: FakeReplicate, make: Maker) -> None:
    p = make()
    inst = llama()
    ident = p.create(inst)
    got = p.invoke(target(inst, ident), {"prompt": "why is the sky blue"}, 60.0)
    assert got.output == ["echo:", " why", " is", " the", " sky", " blue"]
    assert got.usage == Usage(5, 6)
    (post,) = [r for r in api.requests if r.path.endswith("/predictions")]
    assert post.path == "/v1/deployments/acme/llama/predictions"
    assert post.body == {"input": {"prompt": "why is the sky blue"}}
    assert post.headers["prefer"] == "wait=1"  # under timeoutSeconds: 2
    assert make.sleeps == []  # finished within the wait: no poll


def test_a_slow_prediction_is_polled_at_urls_get_until_it_ends(
    api: FakeReplicate, make: Maker
) -> None:
    p = make(pollIntervalSeconds=0.01)
    inst = sdxl()
    ident = p.create(inst)
    api.prediction_steps = 3
    got = p.invoke(target(inst, ident), {"prompt": "a red fox"}, 60.0)
    assert isinstance(got.output, list) and got.output[0].endswith("/out-0.webp")
    assert got.usage == Usage(None, None)  # an image model reports no tokens: unknown
    gets = [r.path for r in api.requests if r.path.startswith("/v1/predictions/")]
    assert gets == ["/v1/predictions/pred000001"] * 3
    assert make.sleeps == [0.01, 0.01, 0.01]


def test_a_failed_prediction_fails_the_run_with_replicates_error_sent_once(
    api: FakeReplicate, make: Maker
) -> None:
    p = make()
    inst = llama()
    ident = p.create(inst)
    api.fail_next_prediction("CUDA out of memory")
    with pytest.raises(ProviderError, match="prediction pred000001 failed: CUDA out of memory"):
        p.invoke(target(inst, ident), {"prompt": "hi"}, 60.0)
    assert len([r for r in api.requests if r.path.endswith("/predictions")]) == 1
    with pytest.raises(ProviderError, match=r"422.*input.prompt: required"):
        p.invoke(target(inst, ident), {"question": "hi"}, 60.0)


def test_a_prediction_past_the_deadline_is_cancelled(api: FakeReplicate, make: Maker) -> None:
    clock = FakeTime()
    p = ReplicateProvider(
        ProviderConfig(
            "replicate",
            "replicate",
            "production",
            {"baseUrl": api.url, "owner": "acme", "timeoutSeconds": 2},
            {"tokenEnv": "REPLICATE_API_TOKEN"},
        ),
        repo_root=Path("."),
        env=ENV,
        sleep=clock.sleep,
        clock=clock.clock,
    )
    try:
        inst = llama()
        ident = p.create(inst)
        api.hold_next_prediction()
        with pytest.raises(ProviderError, match="did not finish within the run's deadline of 3 s"):
            p.invoke(target(inst, ident), {"prompt": "hi"}, 3.0)
        (pred,) = api.predictions()
        assert pred["status"] == "canceled"
        assert sum(clock.sleeps) <= 3.0
    finally:
        p.close()


def test_a_deployment_that_is_offline_or_not_ours_is_not_called(
    api: FakeReplicate, make: Maker
) -> None:
    p = make()
    inst = llama()
    ident = p.create(inst)
    api.tamper("acme", "llama", "max_instances", 0)
    api.tamper("acme", "llama", "min_instances", 0)
    with pytest.raises(ProviderError, match=r"offline \(0 instances\)"):
        p.invoke(target(inst, ident), {"prompt": "hi"}, 60.0)
    other = sdxl()
    with pytest.raises(ProviderError, match="it is not this deployment's"):
        p.invoke(InvokeTarget("production", "llama", ident, other.body()), {"prompt": "x"}, 60.0)
    assert api.predictions() == []


def test_suspended_is_zero_instances_and_lifting_it_restores_them(
    api: FakeReplicate, make: Maker
) -> None:
    p = make()
    ident = p.create(sdxl())
    p.update(sdxl(suspended=True), ident)
    config = api.deployment("acme", "sdxl")["current_release"]["configuration"]  # type: ignore[index]
    assert (config["min_instances"], config["max_instances"]) == (0, 0)
    assert p.status("Deployment", "sdxl", "production", ident).health == "Suspended"
    recorded = sdxl(suspended=True).body()
    live = p.read("Deployment", "sdxl", "production", ident)
    assert live is not None and not field_diff(recorded, p.live_body(live, recorded))
    api.tamper("acme", "sdxl", "max_instances", 2)  # allowed instances again in the web UI
    live = p.read("Deployment", "sdxl", "production", ident)
    assert live is not None
    (d,) = field_diff(recorded, p.live_body(live, recorded))
    assert (d.path, d.before, d.after) == ("suspended", True, False)
    p.update(sdxl(), ident)
    config = api.deployment("acme", "sdxl")["current_release"]["configuration"]  # type: ignore[index]
    assert (config["min_instances"], config["max_instances"]) == (1, 3)
    assert p.status("Deployment", "sdxl", "production", ident).health == "Healthy"
