"""Issue 13: providers touch only their own objects. Each test drives the real CLI (a
child process) on a real git repo against a loopback API that keeps names unique
across environments and answers a lookup by name with whichever environment holds it
(`FakeDeployApi(global_names=True)`), as some real APIs do. Another environment's
object is never adopted, overwritten or deleted; our own is still adopted after a
lost answer."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Result, commit_all, git, init_repo, run_cli, write_files
from fakes.deploy_api import FakeDeployApi

TOKEN = "tok-OWNERSHIP-5e6f7a8b"
ENV = {"REGISTRY_TOKEN": TOKEN}

ENVIRONMENTS = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: dev}
---
apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
"""
PROVIDER = """apiVersion: reconciler/v1
kind: Provider
metadata: {name: api}
spec:
  type: http
  environments: [dev]
  config: {baseUrl: "%s", timeoutSeconds: 5, retries: 2}
  credentials: {tokenEnv: REGISTRY_TOKEN}
"""
DEPLOYMENT = """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat}
spec:
  environments: [dev]
  provider: api
  model: gpt-4o-mini
  endpoint: /chat
  options: {temperature: %s}
"""
#: Production's object, made by production's own reconciler (or by hand).
PRODUCTION = {
    "name": "chat",
    "environment": "production",
    "labels": {},
    "model": "gpt-4o",
    "endpoint": "/chat",
    "options": {"temperature": 0.0},
}


@pytest.fixture
def api() -> Iterator[FakeDeployApi]:
    with FakeDeployApi(token=TOKEN, global_names=True) as server:
        yield server


def dev_repo(root: Path, url: str, temperature: float = 0.2) -> Path:
    init_repo(root)
    write_files(
        root,
        {
            "manifests/environments.yaml": ENVIRONMENTS,
            "manifests/provider.yaml": PROVIDER % url,
            "manifests/chat.yaml": DEPLOYMENT % temperature,
            ".gitignore": ".reconciler/\n",
        },
    )
    commit_all(root, "chat in dev")
    return root


def apply(repo: Path, *args: str) -> Result:
    r = run_cli(["--repo", str(repo), "apply", "--env", "dev", *args], env=ENV)
    assert "Traceback" not in r.out + r.err
    assert TOKEN not in r.out + r.err
    return r


def seed_production(api: FakeDeployApi) -> dict[str, Any]:
    """Production's `chat`, made through the API as any client would."""
    resp = httpx.post(
        f"{api.url}/api/v1/deployments",
        json=PRODUCTION,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status_code == 201, resp.text
    made = api.get("deployments", "production", "chat")
    assert made is not None
    return made


def writes_to(api: FakeDeployApi, ident: str) -> list[str]:
    """The PUTs and DELETEs the server saw for object `ident`."""
    return [
        r.method
        for r in api.requests
        if r.method in ("PUT", "DELETE") and r.path.endswith("/" + ident)
    ]


def refused(r: Result, ident: str) -> None:
    text = r.out + r.err
    assert r.code == 1, text
    assert f"the lookup by name found object {ident!r}, which is not this instance's" in text
    assert "'chat' in environment 'production'" in text
    assert "nothing was changed" in text


def test_dev_create_409_on_production_name_is_refused(api: FakeDeployApi, tmp_path: Path) -> None:
    prod = seed_production(api)
    repo = dev_repo(tmp_path / "dev", api.url)
    r = apply(repo)
    refused(r, prod["id"])
    assert api.get("deployments", "production", "chat") == prod
    assert writes_to(api, prod["id"]) == []
    assert api.get("deployments", "dev", "chat") is None


def test_update_after_404_finding_production_is_refused(api: FakeDeployApi, tmp_path: Path) -> None:
    repo = dev_repo(tmp_path / "dev", api.url)
    assert apply(repo).code == 0
    ours = api.get("deployments", "dev", "chat")
    assert ours is not None
    api.remove("deployments", "dev", "chat")  # gone behind our back; production takes the name
    prod = seed_production(api)
    write_files(repo, {"manifests/chat.yaml": DEPLOYMENT % 0.7})
    commit_all(repo, "warmer")
    r = apply(repo)
    refused(r, prod["id"])
    assert api.get("deployments", "production", "chat") == prod
    assert writes_to(api, prod["id"]) == []
    assert writes_to(api, ours["id"]) == ["PUT"]  # the one by our id, answered 404


def test_delete_without_recorded_id_finding_production_is_refused(
    api: FakeDeployApi, tmp_path: Path
) -> None:
    repo = dev_repo(tmp_path / "dev", api.url)
    assert apply(repo).code == 0
    # state from before ids were recorded (or copied from elsewhere): no provider id
    with closing(sqlite3.connect(repo / ".reconciler" / "state.db")) as db, db:
        assert db.execute("UPDATE applied SET provider_id = NULL").rowcount == 1
    api.remove("deployments", "dev", "chat")
    prod = seed_production(api)
    git(repo, "rm", "-q", "manifests/chat.yaml")
    commit_all(repo, "retire chat")
    r = apply(repo)
    refused(r, prod["id"])
    assert api.get("deployments", "production", "chat") == prod
    assert writes_to(api, prod["id"]) == []


def test_drift_never_shows_another_environments_object_as_ours(
    api: FakeDeployApi, tmp_path: Path
) -> None:
    repo = dev_repo(tmp_path / "dev", api.url)
    assert apply(repo).code == 0
    api.remove("deployments", "dev", "chat")
    prod = seed_production(api)
    r = run_cli(["--repo", str(repo), "drift", "--env", "dev"], env=ENV)
    text = r.out + r.err
    assert "Traceback" not in text and r.code != 0, text
    assert "not this instance's" in text
    assert "gpt-4o\n" not in text and '"gpt-4o"' not in text  # production's body unshown
    assert api.get("deployments", "production", "chat") == prod


def test_own_object_after_a_lost_post_answer_is_still_adopted(
    api: FakeDeployApi, tmp_path: Path
) -> None:
    prod = seed_production(api)
    api.remove("deployments", "production", "chat")  # the name is free again
    repo = dev_repo(tmp_path / "dev", api.url)
    api.fail_next("lost", method="POST")  # made, but the answer never arrives
    r = apply(repo)
    assert r.code == 0, r.out + r.err
    ours = api.get("deployments", "dev", "chat")
    assert ours is not None and ours["id"] != prod["id"]
    assert api.create_count[("dev", "chat")] == 1
    assert [x.method for x in api.requests if x.method == "POST"] == ["POST"] * 3
    # recorded under the adopted id: the next change is a PUT to it
    write_files(repo, {"manifests/chat.yaml": DEPLOYMENT % 0.5})
    commit_all(repo, "cooler")
    assert apply(repo).code == 0
    assert writes_to(api, ours["id"]) == ["PUT"]
    assert api.get("deployments", "dev", "chat")["options"] == {"temperature": 0.5}  # type: ignore[index]


# --- the local provider keys by environment: the same name elsewhere is never touched ---

LOCAL = """apiVersion: reconciler/v1
kind: Provider
metadata: {name: local}
spec:
  type: local
  environments: [dev, production]
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat}
spec:
  environments: %s
  provider: local
  model: gpt-4o-mini
  options: {temperature: %s}
"""


def registry_rows(repo: Path) -> dict[str, str]:
    with closing(sqlite3.connect(repo / ".reconciler" / "local-registry.db")) as db:
        rows = db.execute("SELECT environment, body FROM objects WHERE name = 'chat'").fetchall()
    return dict(rows)


def test_local_provider_dev_changes_leave_production_alone(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "local")
    write_files(
        repo,
        {
            "manifests/environments.yaml": ENVIRONMENTS,
            "manifests/chat.yaml": LOCAL % ("[dev, production]", 0.2),
            ".gitignore": ".reconciler/\n",
        },
    )
    commit_all(repo, "chat everywhere")
    r = run_cli(["--repo", str(repo), "apply"])
    assert r.code == 0, r.out + r.err
    production = registry_rows(repo)["production"]
    write_files(repo, {"manifests/chat.yaml": LOCAL % ("[dev]", 0.9)})
    commit_all(repo, "dev only, warmer")
    assert run_cli(["--repo", str(repo), "apply", "--env", "dev"]).code == 0
    rows = registry_rows(repo)
    assert rows["production"] == production
    assert json.loads(rows["dev"])["options"]["temperature"] == 0.9
    write_files(repo, {"manifests/chat.yaml": LOCAL % ("[production]", 0.2)})
    commit_all(repo, "production only")
    assert run_cli(["--repo", str(repo), "apply", "--env", "dev"]).code == 0
    assert registry_rows(repo) == {"production": production}
