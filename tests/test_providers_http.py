"""The http provider against a real HTTP server on 127.0.0.1 (tests/fakes/deploy_api.py):
idempotent create (409 → lookup), retries with backoff and Retry-After, timeouts,
lost answers, and no token or secret value in any error or request log."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from fakes.deploy_api import FakeDeployApi

from reconciler.errors import ProviderError
from reconciler.instances import Instance, ProviderConfig
from reconciler.providers.http import MAX_RETRY_WAIT, HttpProvider

TOKEN = "tok-Zq8xPvW3mK1"
SECRET = "sk-secret-value-9f2a"
ENV = {"REGISTRY_TOKEN": TOKEN, "CHAT_API_KEY": SECRET}


def chat(temperature: float = 0.2, *, name: str = "chat", kind: str = "Deployment") -> Instance:
    return Instance(
        environment="production",
        kind=kind,
        name=name,
        provider="registry",
        spec={
            "model": "gpt-4o",
            "options": {"temperature": temperature},
            "env": {"API_KEY": {"secretEnv": "CHAT_API_KEY"}, "MODE": "fast"},
        },
        labels={"team": "support"},
    )


@pytest.fixture
def api() -> Iterator[FakeDeployApi]:
    with FakeDeployApi(token=TOKEN, hang_seconds=1.0) as server:
        yield server


class Made:
    """Providers made by a test, with the waits they asked for; all closed at the end."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.made: list[HttpProvider] = []

    def __call__(
        self,
        url: str | None,
        *,
        env: dict[str, str] = ENV,
        credentials: dict[str, str] | None = None,
        clock: Any = None,
        **config: Any,
    ) -> HttpProvider:
        cfg: dict[str, Any] = {"timeoutSeconds": 0.5, **config}
        if url is not None:
            cfg["baseUrl"] = url
        p = HttpProvider(
            ProviderConfig(
                name="registry",
                type="http",
                environment="production",
                config=cfg,
                credentials={"tokenEnv": "REGISTRY_TOKEN"} if credentials is None else credentials,
            ),
            repo_root=Path("."),
            env=env,
            sleep=self.sleeps.append,
            clock=clock,
        )
        self.made.append(p)
        return p


@pytest.fixture
def make() -> Iterator[Made]:
    m = Made()
    yield m
    for p in m.made:
        p.close()


def stored(api: FakeDeployApi, name: str = "chat") -> dict[str, Any]:
    obj = api.get("deployments", "production", name)
    assert obj is not None, f"{name} is not on the server"
    return obj


def no_leaks(api: FakeDeployApi, *texts: str) -> None:
    for t in texts:
        assert TOKEN not in t and SECRET not in t
    for r in api.requests:
        assert TOKEN not in repr(r)
        assert "authorization" not in r.headers


# --- the happy path -------------------------------------------------------------------


def test_create_read_update_delete(api: FakeDeployApi, make: Made) -> None:
    p = make(api.url)
    assert p.read("Deployment", "chat", "production", None) is None
    pid = p.create(chat())
    live = p.read("Deployment", "chat", "production", pid)
    assert live is not None and live.provider_id == pid
    assert live.body["options"] == {"temperature": 0.2}
    assert live.body["labels"] == {"team": "support"}
    assert SECRET not in repr(live)  # the body holds values; the repr must not show them
    p.update(chat(0.9), pid)
    assert stored(api)["options"] == {"temperature": 0.9}
    p.delete("Deployment", "chat", "production", pid)
    assert api.objects() == []
    p.delete("Deployment", "chat", "production", pid)  # 404: done
    p.delete("Deployment", "chat", "production", None)  # not found by name: done
    assert all(r.authorized for r in api.requests)
    assert [r.method for r in api.requests] == [
        "GET",
        "POST",
        "GET",
        "PUT",
        "DELETE",
        "DELETE",
        "GET",
    ]
    assert api.requests[0].query == {"environment": "production"}
    assert api.requests[0].path == "/api/v1/deployments/name/chat"
    assert make.sleeps == []
    no_leaks(api)


def test_secrets_are_resolved_in_the_body_sent(api: FakeDeployApi, make: Made) -> None:
    make(api.url).create(chat())
    (post,) = [r for r in api.requests if r.method == "POST"]
    assert post.body == {
        "name": "chat",
        "environment": "production",
        "labels": {"team": "support"},
        "model": "gpt-4o",
        "options": {"temperature": 0.2},
        "env": {"API_KEY": SECRET, "MODE": "fast"},
    }


def test_schedules_use_their_own_collection(api: FakeDeployApi, make: Made) -> None:
    p = make(api.url)
    sched = Instance("production", "Schedule", "chat", "registry", {"cron": "0 3 * * *"})
    sid = p.create(sched)
    did = p.create(chat())
    assert sid != did
    assert [o["cron"] for o in api.objects("schedules")] == ["0 3 * * *"]
    live = p.read("Schedule", "chat", "production", None)
    assert live is not None and live.provider_id == sid
    p.delete("Schedule", "chat", "production", None)
    assert api.objects("schedules") == [] and len(api.objects()) == 1


def test_paths_are_configurable(make: Made) -> None:
    paths = {"deployments": "/v2/endpoints", "schedules": "/v2/jobs"}
    with FakeDeployApi(paths=paths) as api:
        p = make(api.url + "/", credentials={}, paths={"Deployment": "/v2/endpoints/"})
        p.create(chat())
        assert api.requests[0].path == "/v2/endpoints"
        assert len(api.objects("deployments")) == 1
        assert "authorization" not in api.requests[0].headers


# --- idempotency ---------------------------------------------------------------------------


def test_create_twice_looks_up_and_never_creates_twice(api: FakeDeployApi, make: Made) -> None:
    p = make(api.url)
    first = p.create(chat())
    assert p.create(chat()) == first
    assert api.create_count[("production", "chat")] == 1
    assert [r.method for r in api.requests] == ["POST", "POST", "GET"]  # same body: no PUT


def test_conflict_adopts_the_existing_object_with_the_new_body(
    api: FakeDeployApi, make: Made
) -> None:
    p = make(api.url)
    first = p.create(chat(0.2))
    assert p.create(chat(0.7)) == first  # e.g. update with no recorded id, or heal
    assert api.create_count[("production", "chat")] == 1
    assert stored(api)["options"]["temperature"] == 0.7


def test_lost_answer_to_post_is_retried_and_finds_its_object(
    api: FakeDeployApi, make: Made
) -> None:
    api.fail_next("lost", method="POST")  # the server creates it, the answer never arrives
    pid = make(api.url).create(chat())
    assert api.create_count[("production", "chat")] == 1
    assert stored(api)["id"] == pid
    assert [r.method for r in api.requests] == ["POST", "POST", "GET"]
    assert len(make.sleeps) == 1


def test_concurrent_creates_create_each_once(api: FakeDeployApi, make: Made) -> None:
    p = make(api.url)
    names = [f"d{i}" for i in range(20)]
    ids: dict[str, set[str]] = {n: set() for n in names}
    lock = threading.Lock()

    def work() -> None:
        for n in names:
            pid = p.create(chat(name=n))
            with lock:
                ids[n].add(pid)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(len(v) == 1 for v in ids.values())
    assert set(api.create_count.values()) == {1} and len(api.create_count) == 20


def test_update_with_a_stale_id_follows_the_name(api: FakeDeployApi, make: Made) -> None:
    p = make(api.url)
    old = p.create(chat())
    api.remove("deployments", "production", "chat")
    new = make(api.url).create(chat())  # recreated behind our back under another id
    assert new != old
    p.update(chat(0.8), old)
    assert stored(api)["options"]["temperature"] == 0.8
    api.remove("deployments", "production", "chat")
    with pytest.raises(ProviderError, match=r"deployment\.chat .*no longer exists.*--heal"):
        p.update(chat(), new)


# --- retries -------------------------------------------------------------------------------


def test_503_twice_then_ok_backs_off_with_jitter(api: FakeDeployApi, make: Made) -> None:
    api.fail_next(503, times=2)
    pid = make(api.url).create(chat())
    assert stored(api)["id"] == pid
    assert len(make.sleeps) == 2
    assert 0 <= make.sleeps[0] <= 0.5 and 0 <= make.sleeps[1] <= 1.0  # full jitter, doubling
    assert api.create_count[("production", "chat")] == 1


def test_429_retry_after_seconds_is_honoured(api: FakeDeployApi, make: Made) -> None:
    api.fail_next(429, retry_after=7)
    make(api.url).create(chat())
    assert make.sleeps == [7.0]


def test_retry_after_http_date_and_the_wait_limit(api: FakeDeployApi, make: Made) -> None:
    now = 1_750_000_000.0
    api.fail_next(503, retry_after=formatdate(now + 12, usegmt=True))
    api.fail_next(429, retry_after=300)  # honoured in full, not cut to 30 s
    make(api.url, clock=lambda: now).read("Deployment", "chat", "production", None)
    assert make.sleeps == [12.0, 300.0]
    api.fail_next(429, retry_after=3600)
    with pytest.raises(ProviderError) as e:
        make(api.url, clock=lambda: now).read("Deployment", "chat", "production", None)
    assert make.sleeps == [12.0, 300.0]  # refused at once, not slept on
    assert f"over the limit of {MAX_RETRY_WAIT:.0f}s in total" in e.value.message


def test_connection_reset_is_retried(api: FakeDeployApi, make: Made) -> None:
    api.fail_next("reset", times=2)
    p = make(api.url)
    pid = p.create(chat())
    assert len(make.sleeps) == 2
    assert stored(api)["id"] == pid


def test_a_hanging_server_times_out_and_is_retried(api: FakeDeployApi, make: Made) -> None:
    api.fail_next("hang")
    p = make(api.url, timeoutSeconds=0.2)
    assert p.read("Deployment", "chat", "production", None) is None
    assert len(make.sleeps) == 1
    assert len(api.requests) == 2


def test_hanging_every_time_gives_up_naming_the_timeout(api: FakeDeployApi, make: Made) -> None:
    api.fail_next("hang", times=2)
    p = make(api.url, timeoutSeconds=0.2, retries=1)
    with pytest.raises(ProviderError) as e:
        p.read("Deployment", "chat", "production", None)
    assert "no answer within 0.2s after 2 attempts" in e.value.message


def test_5xx_that_never_ends_gives_up_after_the_retries(api: FakeDeployApi, make: Made) -> None:
    api.fail_next(503, times=10)
    with pytest.raises(ProviderError) as e:
        make(api.url).create(chat())
    assert e.value.message == (
        f"provider 'registry' (POST {api.url}/api/v1/deployments): "
        "503 Service Unavailable after 5 attempts"
    )
    assert len(make.sleeps) == 4
    no_leaks(api, e.value.message)


def test_client_errors_are_not_retried(api: FakeDeployApi, make: Made) -> None:
    api.fail_next(400, body={"error": "model 'gpt-9' is not offered"})
    with pytest.raises(ProviderError) as e:
        make(api.url).create(chat())
    assert e.value.message == (
        f"provider 'registry' (POST {api.url}/api/v1/deployments): "
        "400 Bad Request: model 'gpt-9' is not offered"
    )
    assert make.sleeps == []


def test_server_down_names_provider_and_url(make: Made) -> None:
    with FakeDeployApi() as gone:
        url = gone.url
    p = make(url, retries=2)
    with pytest.raises(ProviderError) as e:
        p.create(chat())
    assert e.value.message == (
        f"provider 'registry' (POST {url}/api/v1/deployments): connection refused after 3 attempts"
    )
    assert len(make.sleeps) == 2


# --- credentials and secrets ----------------------------------------------------------------


def test_missing_token_env_var_names_the_variable(api: FakeDeployApi, make: Made) -> None:
    p = make(api.url, env={"CHAT_API_KEY": SECRET})
    with pytest.raises(ProviderError, match="environment variable REGISTRY_TOKEN is not set"):
        p.read("Deployment", "chat", "production", None)
    assert api.requests == []


def test_wrong_token_is_reported_without_showing_either(make: Made) -> None:
    with FakeDeployApi(token="the-right-token") as api:
        p = make(api.url)
        with pytest.raises(ProviderError) as e:
            p.create(chat())
    msg = e.value.message
    assert "401 Unauthorized" in msg and "REGISTRY_TOKEN" in msg
    assert "the-right-token" not in msg
    no_leaks(api, msg, str(e.value), repr(p))


def test_token_and_secrets_echoed_by_the_server_are_scrubbed(
    api: FakeDeployApi, make: Made
) -> None:
    api.fail_next(422, body={"error": f"bad env API_KEY={SECRET} with Bearer {TOKEN}"})
    with pytest.raises(ProviderError) as e:
        make(api.url).create(chat())
    assert "422 Unprocessable Entity: bad env API_KEY=" in e.value.message
    no_leaks(api, e.value.message)


def test_missing_secret_env_var_names_it_and_sends_nothing(api: FakeDeployApi, make: Made) -> None:
    p = make(api.url, env={"REGISTRY_TOKEN": TOKEN})
    with pytest.raises(ProviderError) as e:
        p.create(chat())
    assert e.value.message == (
        "provider 'registry': deployment.chat: environment variable CHAT_API_KEY is not set "
        "(a secretEnv reference needs it)"
    )
    assert api.requests == []


def test_no_token_configured_sends_no_authorization(make: Made) -> None:
    with FakeDeployApi() as api:
        make(api.url, credentials={}).create(chat())
        assert api.requests[0].authorized
        assert "authorization" not in api.requests[0].headers


# --- validate (plan time, no network) ---------------------------------------------------------


def test_validate_is_clean_for_a_good_config(make: Made) -> None:
    assert make("https://deploy.example.com", env={}).validate(chat()) == []


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, "config.baseUrl is required"),
        ({"baseUrl": "deploy.example.com"}, "config.baseUrl must be an http(s) URL"),
        ({"baseUrl": "ftp://x"}, "config.baseUrl must be an http(s) URL"),
        ({"baseUrl": 3}, "config.baseUrl must be a string URL"),
        ({"baseUrl": "https://x", "timeoutSeconds": 0}, "config.timeoutSeconds must be positive"),
        ({"baseUrl": "https://x", "retries": -1}, "config.retries must be an integer"),
        ({"baseUrl": "https://x", "paths": {"Deployment": "x"}}, "config.paths.Deployment"),
        ({"baseUrl": "https://x", "baseURL": "https://y"}, "unknown config key 'baseURL'"),
    ],
)
def test_validate_reports_config_problems(
    make: Made, config: dict[str, Any], expected: str
) -> None:
    p = make(None, env={}, **config)
    problems = p.validate(chat())
    assert any(expected.replace("must be positive", "must be a positive") in m for m in problems)
    assert all(m.startswith("provider 'registry': ") for m in problems)
    with pytest.raises(ProviderError, match="misconfigured"):  # and calls refuse to run
        p.read("Deployment", "chat", "production", None)


def test_validate_reports_a_kind_without_a_path(make: Made) -> None:
    p = make("https://x", env={})
    odd = Instance("production", "Evaluation", "e", "registry", {})
    assert p.validate(odd) == [
        "provider 'registry' has no API path for kind 'Evaluation'; set config.paths.Evaluation"
    ]


# --- the total deadline (timeoutSeconds), in-process and through the CLI ----------------------


@pytest.mark.parametrize("mode", ["drip-headers", "drip-body"])
def test_timeout_seconds_is_a_total_deadline_a_dripping_server_cannot_stretch(
    api: FakeDeployApi, make: Made, mode: str
) -> None:
    """One byte every 0.8 s: each read beats a 1 s read timeout, the request never ends."""
    api.fail_next(mode)  # type: ignore[arg-type]
    p = make(api.url, timeoutSeconds=1, retries=0)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            p.read("Deployment", "chat", "production", None)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(30)
    assert outcome, "the request outlived its deadline"
    err = outcome[0]
    assert isinstance(err, ProviderError)
    url = f"{api.url}/api/v1/deployments/name/chat?environment=production"
    assert err.message == (
        f"provider 'registry' (GET {url}): the answer did not complete within 1s after "
        "1 attempt (1s is the total deadline per request, set by config.timeoutSeconds)"
    )


CLI_REPO = {
    "manifests/env.yaml": """apiVersion: reconciler/v1
kind: Environment
metadata: {name: dev}
spec: {description: test}
""",
    "manifests/provider.yaml": """apiVersion: reconciler/v1
kind: Provider
metadata: {name: api}
spec:
  type: http
  environments: [dev]
  config: {baseUrl: "%(url)s", timeoutSeconds: 1, retries: 0}
  credentials: {tokenEnv: REGISTRY_TOKEN}
""",
    "manifests/chat.yaml": """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat}
spec:
  environments: [dev]
  provider: api
  model: gpt-4o-mini
  env: {API_KEY: {secretEnv: CHAT_API_KEY}}
""",
    ".gitignore": ".reconciler/\n",
}


@pytest.mark.parametrize("mode", ["drip-headers", "drip-body"])
def test_apply_fails_the_change_at_the_deadline_and_releases_the_lock(
    tmp_path: Path, mode: str
) -> None:
    from conftest import commit_all, init_repo, run_cli, write_files

    with FakeDeployApi(token=TOKEN) as server:
        repo = init_repo(tmp_path / "r")
        write_files(repo, {k: v % {"url": server.url} for k, v in CLI_REPO.items()})
        commit_all(repo, "a provider that drips")
        server.fail_next(mode, method="POST")  # type: ignore[arg-type]
        # Without a total deadline this apply never ends (run_cli's timeout fails it).
        first = run_cli(["--repo", str(repo), "apply"], env=ENV, timeout=60)
        out = first.out + first.err
        assert first.code == 1, out
        assert (
            f"deployment.chat: failed: provider 'api' (POST {server.url}/api/v1/deployments): "
            "the answer did not complete within 1s after 1 attempt (1s is the total deadline "
            "per request, set by config.timeoutSeconds)"
        ) in first.out
        assert "Traceback" not in out and TOKEN not in out and SECRET not in out
        # The lock went with the failed run: the next apply runs (and now succeeds).
        second = run_cli(["--repo", str(repo), "apply"], env=ENV, timeout=60)
        assert second.code == 0, second.out + second.err
        assert server.get("deployments", "dev", "chat") is not None
