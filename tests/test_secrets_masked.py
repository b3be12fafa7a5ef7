"""Issue 13: secrets are masked at every exit. Each test drives the real CLI (a child
process) against the fake deployment API on 127.0.0.1 and real git/SQLite state."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Result, commit_all, init_repo, run_cli, write_files
from fakes.deploy_api import FakeDeployApi

TOKEN = "tok-SECRET-1f2e3d4c5b6a"
VENDOR = "vendor-SECRET-a1b2c3d4"
GH = "ghs_FORGE-SECRET-0123456789"
FPKEY = "fingerprint-SECRET-key-42"
SECRETS = {
    "REGISTRY_TOKEN": TOKEN,
    "VENDOR_KEY": VENDOR,
    "GITHUB_TOKEN": GH,
    "RECONCILER_FINGERPRINT_KEY": FPKEY,
}
ALL = (TOKEN, VENDOR, GH, FPKEY)

ENV = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: dev}
"""
PROVIDER = """apiVersion: reconciler/v1
kind: Provider
metadata: {name: api}
spec:
  type: http
  environments: [dev]
  config: {baseUrl: "%s", timeoutSeconds: 2, retries: 0}
  credentials: {tokenEnv: REGISTRY_TOKEN}
"""
DEPLOYMENT = """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: %(name)s}
spec:
  environments: [dev]
  provider: api
  model: gpt-4o-mini
  endpoint: %(endpoint)s
  options: {temperature: 0.2}
  env: {LOG_LEVEL: info, VENDOR_KEY: {secretEnv: VENDOR_KEY}}
"""


def make_repo(root: Path, url: str, deployments: dict[str, str] | None = None) -> Path:
    init_repo(root)
    files: dict[str, str | bytes] = {
        "manifests/env.yaml": ENV,
        "manifests/provider.yaml": PROVIDER % url,
        ".gitignore": ".reconciler/\n",
    }
    for name, endpoint in (deployments or {"chat": "/chat"}).items():
        files[f"manifests/{name}.yaml"] = DEPLOYMENT % {"name": name, "endpoint": endpoint}
    write_files(root, files)
    commit_all(root, "services")
    return root


def cli(repo: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    r = run_cli(["--repo", str(repo), *args], env=SECRETS if env is None else env)
    assert "Traceback" not in r.out + r.err
    return r


def leaks(text: str, secrets: tuple[str, ...] = ALL) -> list[str]:
    return [s for s in secrets if s in text]


def strings(doc: Any) -> Iterator[str]:
    """Every string in a JSON document, mapping keys included."""
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield k
            yield from strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from strings(v)


def json_leaks(out: str) -> list[str]:
    return [s for s in ALL for text in strings(json.loads(out)) if s in text]


@pytest.fixture
def list_api() -> Iterator[FakeDeployApi]:
    with FakeDeployApi(token=TOKEN, env_shape="list") as server:
        yield server


def test_drift_maps_list_shaped_env_back_to_references(
    list_api: FakeDeployApi, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "r", list_api.url)
    assert cli(repo, "apply").code == 0
    assert list_api.get("deployments", "dev", "chat")["env"]["VENDOR_KEY"] == VENDOR
    r = cli(repo, "drift")
    assert (r.code, leaks(r.out + r.err)) == (0, []), r.out + r.err
    assert "1 in sync, 0 drifted" in r.out
    r = cli(repo, "drift", "--json")
    assert r.code == 0 and json_leaks(r.out) == []
    assert json.loads(r.out)["dev"][0]["status"] == "in-sync"


@pytest.mark.parametrize("as_json", [False, True])
def test_drift_never_shows_a_secret_copied_elsewhere(
    list_api: FakeDeployApi, tmp_path: Path, as_json: bool
) -> None:
    repo = make_repo(tmp_path / "r", list_api.url)
    assert cli(repo, "apply").code == 0
    list_api.tamper(
        "deployments",
        "dev",
        "chat",
        model=f"gpt-4o-{VENDOR}",
        options={"temperature": 0.2, "notes": [f"token {TOKEN}", {GH: FPKEY}]},
        env={"LOG_LEVEL": "debug", "VENDOR_KEY": VENDOR, f"COPY_{VENDOR}": VENDOR},
    )
    args = ("drift", "--json") if as_json else ("drift",)
    r = cli(repo, *args)
    assert r.code == 2, r.err
    assert leaks(r.out + r.err) == []
    if as_json:
        assert json_leaks(r.out) == []
        diff = {d["path"]: d for d in json.loads(r.out)["dev"][0]["diff"]}
        assert diff["model"]["after"] == "(sensitive)"
        assert "env.LOG_LEVEL" in diff
    else:
        assert 'model: recorded "gpt-4o-mini", live "(sensitive)"' in r.out
        assert 'env.LOG_LEVEL: recorded "info", live "debug"' in r.out


def test_drift_without_the_secret_in_its_environment_still_masks_it(
    list_api: FakeDeployApi, tmp_path: Path
) -> None:
    """A drift job may run without VENDOR_KEY: the live value at the secret's place
    is itself treated as a secret, wherever else it appears."""
    repo = make_repo(tmp_path / "r", list_api.url)
    assert cli(repo, "apply").code == 0
    list_api.tamper("deployments", "dev", "chat", model=VENDOR, labels={VENDOR: "x"})
    env = {"REGISTRY_TOKEN": TOKEN, "RECONCILER_FINGERPRINT_KEY": FPKEY}
    for args in (("drift",), ("drift", "--json")):
        r = cli(repo, *args, env=env)
        assert r.code == 2, r.err
        assert leaks(r.out + r.err) == []


def test_status_and_history_mask_what_state_recorded(tmp_path: Path) -> None:
    """An API whose ids embed a secret: status and history register the recorded
    secret references (they load no manifests) before rendering."""
    with FakeDeployApi(token=TOKEN, id_prefix=f"{VENDOR}-{GH}-") as api:
        repo = make_repo(tmp_path / "r", api.url)
        assert cli(repo, "apply").code == 0
        assert VENDOR in api.objects()[0]["id"]
    for args in (("status",), ("status", "--json"), ("history",), ("history", "--json")):
        r = cli(repo, *args)
        assert r.code == 0, r.err
        assert leaks(r.out + r.err) == [], args
    rows = json.loads(cli(repo, "status", "--json").out)
    assert rows[0]["provider_id"].startswith("(sensitive)")


def test_userinfo_in_a_url_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    password = "pa55-SECRET-word"
    with FakeDeployApi(token=TOKEN) as api:
        url = api.url.replace("http://", f"http://deployer:{password}@")
        repo = make_repo(tmp_path / "r", url)
        for args in (("validate",), ("plan",), ("--log-format", "json", "-v", "apply")):
            r = cli(repo, *args)
            assert r.code == 1, (args, r.out, r.err)
            assert password not in r.out + r.err
            assert "config.baseUrl is a URL with credentials in it" in r.err
        assert api.requests == []
    state = repo / ".reconciler" / "state.db"
    if state.exists():
        with sqlite3.connect(state) as db:
            dump = "\n".join(db.iterdump())
        assert password not in dump


def test_a_token_as_user_name_is_refused_too(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", f"https://{TOKEN}@deploy.example.com")
    r = cli(repo, "validate")
    assert r.code == 1 and leaks(r.out + r.err) == []
    assert "config.baseUrl is a URL with credentials in it" in r.err


@pytest.mark.parametrize(
    "credentials",
    ["{token: hunter2}", '{token: "hunter2!"}', '{tokenEnv: "hunter2 x"}', "{apiKey: 12345678}"],
)
def test_credential_values_are_never_echoed_by_validate(tmp_path: Path, credentials: str) -> None:
    repo = make_repo(tmp_path / "r", "https://deploy.example.com")
    (repo / "manifests" / "provider.yaml").write_text(
        (PROVIDER % "https://deploy.example.com").replace("{tokenEnv: REGISTRY_TOKEN}", credentials)
    )
    for args in (("validate",), ("plan",)):
        r = cli(repo, *args)
        assert r.code == 1, (args, r.out)
        assert "hunter2" not in r.out + r.err and "12345678" not in r.out + r.err
        assert "manifests/provider.yaml:8:" in r.err, r.err


def test_a_credential_typed_as_a_variable_name_is_masked_when_unset(
    list_api: FakeDeployApi, tmp_path: Path
) -> None:
    """`tokenEnv: hunter2`: the name is not set and not written like a variable, so
    it may be the token itself; errors, logs and state never show it."""
    repo = make_repo(tmp_path / "r", list_api.url)
    provider = repo / "manifests" / "provider.yaml"
    provider.write_text(provider.read_text().replace("REGISTRY_TOKEN", "hunter2"))
    commit_all(repo, "token in the wrong place")
    r = cli(repo, "--log-format", "json", "apply")
    assert r.code == 1
    assert "hunter2" not in r.out + r.err
    assert "credentials.tokenEnv" in r.out + r.err
    r = cli(repo, "history", "--json")
    assert "hunter2" not in r.out
    with sqlite3.connect(repo / ".reconciler" / "state.db") as db:
        assert "hunter2" not in "\n".join(db.iterdump())


def test_equivalent_endpoint_paths_are_one_endpoint(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "r",
        "https://deploy.example.com",
        {"a": "/chat", "b": "/chat/", "c": "//chat", "d": "/chat//v2/", "e": "/chat/v2"},
    )
    r = cli(repo, "validate")
    assert r.code == 1
    assert "manifests/b.yaml:8:13: endpoint '/chat/' is already used by deployment 'a'" in r.err
    assert "manifests/c.yaml:8:13: endpoint '//chat' is already used by deployment 'a'" in r.err
    assert "manifests/e.yaml:8:13: endpoint '/chat/v2' is already used by deployment 'd'" in r.err
    assert r.err.count("is already used") == 3
