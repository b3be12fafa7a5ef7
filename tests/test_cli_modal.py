"""The modal provider through the CLI (real processes, the real `modal` SDK) against
its gRPC stand-in on 127.0.0.1: adopting a deployed function, a re-apply that writes
nothing, an update in place, an app stopped under it, throttling, drift and heal, a
protected delete that stops the app, another deployment's function left alone, and
what happens without the SDK. No credential in any output or file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import commit_all, init_repo, run_cli, write_files

pytest.importorskip("modal", reason="the modal extra is not installed")

from fakes.modal import FakeModal

TOKEN_ID = "ak-reconcilerCLI00001"
SECRET = "as-SECRETcli0123456789abcdefgh"
ENV = {"MODAL_TOKEN_ID": TOKEN_ID, "MODAL_TOKEN_SECRET": SECRET}
STOPPED = 5

FILES = {
    ".gitignore": ".reconciler/\n",
    "manifests/environments.yaml": """apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
spec: {description: customer-facing, protected: true}
""",
    "manifests/providers.yaml": """apiVersion: reconciler/v1
kind: Provider
metadata: {name: md}
spec:
  type: modal
  environments: [production]
  config: {serverUrl: "%(url)s", timeoutSeconds: 10, pollIntervalSeconds: 0.05}
  credentials: {tokenIdEnv: MODAL_TOKEN_ID, tokenSecretEnv: MODAL_TOKEN_SECRET}
""",
    "manifests/chat.yaml": """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat}
spec:
  environments: [production]
  provider: md
  model: llama-3-8b-instruct
  scaling: {minReplicas: 1, maxReplicas: 4}
  modal: {app: chat-app, function: serve, scaledownWindow: 300}
  risk: high
""",
}
CHAT = "manifests/chat.yaml"


@dataclass
class World:
    repo: Path
    md: FakeModal

    def cli(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        r = run_cli(["--repo", str(self.repo), *args], env=ENV if env is None else env)
        out = r.out + r.err
        assert SECRET not in out and TOKEN_ID not in out, "a credential leaked into the output"
        assert "Traceback" not in out, out
        return r.code, out

    def edit(self, old: str, new: str) -> None:
        f = self.repo / CHAT
        text = f.read_text()
        assert old in text, f"{old!r} not in {CHAT}"
        f.write_text(text.replace(old, new, 1))
        commit_all(self.repo, "edit")

    def plan(self, *args: str) -> dict[str, dict[str, Any]]:
        code, out = self.cli("plan", "--json", *args)
        assert code == 0, out
        (env,) = json.loads(out[out.index("{") :])["environments"]
        return {c["name"]: c for c in env["changes"]}

    def settings(self) -> dict[str, int]:
        return self.md.function("chat-app", "serve").current()


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with FakeModal(TOKEN_ID, SECRET) as md:
        md.deploy("chat-app", {"serve": {"max_containers": 2}, "embed": {}})
        repo = init_repo(tmp_path / "repo")
        files = dict(FILES)
        files["manifests/providers.yaml"] %= {"url": md.url}
        write_files(repo, files)
        commit_all(repo, "chat on Modal")
        yield World(repo, md)


def history(w: World) -> list[dict[str, Any]]:
    code, out = w.cli("history", "--json")
    assert code == 0, out
    runs = []
    for row in json.loads(out):
        code, shown = w.cli("show", row["id"], "--json")
        assert code == 0, shown
        runs.append(json.loads(shown))
    return runs


def test_adopt_then_a_reapply_writes_nothing_then_update_in_place(w: World) -> None:
    assert {n: c["action"] for n, c in w.plan().items()} == {"chat": "create"}
    code, out = w.cli("apply")
    assert code == 0, out
    assert w.settings() == {
        "min_containers": 1,
        "max_containers": 4,
        "buffer_containers": 0,
        "scaledown_window": 300,
    }
    app = w.md.app("chat-app")
    assert app is not None and app.tags == {"reconciler.serve": "production.chat"}
    writes = w.md.writes()
    assert writes == ["AppSetTags", "FunctionUpdateSchedulingParams"]

    assert w.plan() == {}
    code, out = w.cli("apply")
    assert code == 0, out
    assert w.md.writes() == writes, "a no-op re-apply writes nothing"
    assert w.cli("drift")[0] == 0

    w.edit("maxReplicas: 4", "maxReplicas: 8")
    w.edit("scaledownWindow: 300", "scaledownWindow: 600, bufferContainers: 1")
    assert w.plan()["chat"]["action"] == "update"
    code, out = w.cli("apply")
    assert code == 0, out
    assert w.md.writes() == [*writes, "FunctionUpdateSchedulingParams"]
    assert w.settings() == {
        "min_containers": 1,
        "max_containers": 8,
        "buffer_containers": 1,
        "scaledown_window": 600,
    }
    for f in (w.repo / ".reconciler").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert SECRET.encode() not in data, f"the token secret is in {f.name}"


def test_another_app_is_a_replacement_that_stops_the_old_one_and_says_so(w: World) -> None:
    assert w.cli("apply")[0] == 0
    w.md.deploy("chat-v2", {"serve": {}})
    w.edit("app: chat-app", "app: chat-v2")
    change = w.plan()["chat"]
    assert change["action"] == "replace"
    assert str(change["reason"]).startswith(
        "modal.app cannot be changed in place on md: the app and function are the "
        "deployment's address on Modal; stops Modal app 'chat-app': every function in it"
    )
    code, out = w.cli("apply")
    assert code == 0, out
    old, new = w.md.app("chat-app"), w.md.app("chat-v2")
    assert old is not None and old.state == STOPPED
    assert new is not None and new.tags == {"reconciler.serve": "production.chat"}
    assert w.md.function("chat-v2", "serve").current()["max_containers"] == 4
    assert w.cli("drift")[0] == 0


def test_an_app_not_deployed_is_an_error_that_says_to_deploy_it(w: World) -> None:
    w.edit("app: chat-app", "app: chat-v2")
    code, out = w.cli("apply")
    assert code == 1, out
    assert "no deployed Modal app 'chat-v2'" in out and "run `modal deploy`" in out
    assert w.md.writes() == []


def test_an_app_stopped_under_the_change_fails_the_run_and_is_recorded_failed(
    w: World,
) -> None:
    w.md.stop_after_next_update()
    code, out = w.cli("apply")
    assert code == 1, out
    assert "deployment.chat: failed" in out and "the app is stopped" in out
    (run,) = history(w)
    assert run["outcome"] == "failed"
    (change,) = run["changes"]
    assert change["outcome"] == "failed"


def test_throttling_is_waited_out(w: World) -> None:
    w.md.throttle_next(0.1, "FunctionUpdateSchedulingParams", times=2)
    w.md.throttle_next(0.1, "AppGetOrCreate")
    code, out = w.cli("apply")
    assert code == 0, out
    assert w.md.calls.count("FunctionUpdateSchedulingParams") == 3
    assert w.settings()["max_containers"] == 4


def test_drift_is_detected_and_healed(w: World) -> None:
    assert w.cli("apply")[0] == 0
    w.md.tamper("chat-app", "serve", max_containers=1, scaledown_window=60)
    code, out = w.cli("drift")
    assert code == 2, out
    assert "production: 0 in sync, 1 drifted" in out
    assert "scaling.maxReplicas: recorded 4, live 1" in out
    assert "modal.scaledownWindow: recorded 300, live 60" in out
    code, out = w.cli("apply", "--heal")
    assert code == 0, out
    assert w.cli("drift")[0] == 0
    assert w.settings()["max_containers"] == 4


def test_a_protected_delete_needs_allow_delete_and_stops_the_app(w: World) -> None:
    assert w.cli("apply")[0] == 0
    (w.repo / CHAT).unlink()
    commit_all(w.repo, "retire the chat function")
    change = w.plan()["chat"]
    assert change["action"] == "delete" and "--allow-delete" in str(change["refused"])
    assert "stops Modal app 'chat-app': every function in it stops" in str(change["reason"])
    code, out = w.cli("apply")
    assert code == 3 and "needs --allow-delete" in out, out
    app = w.md.app("chat-app")
    assert app is not None and app.state != STOPPED
    code, out = w.cli("apply", "--allow-delete")
    assert code == 0, out
    assert app.state == STOPPED


def test_a_function_another_deployment_manages_is_left_alone(w: World) -> None:
    app = w.md.app("chat-app")
    assert app is not None
    app.tags = {"reconciler.serve": "staging.chat", "team": "ml"}
    code, out = w.cli("apply")
    assert code == 1, out
    assert "managed by staging deployment.chat" in out and "nothing was changed" in out
    assert w.md.writes() == []


def test_plan_time_errors_are_located_without_the_network(w: World) -> None:
    w.edit("scaling: {minReplicas: 1, maxReplicas: 4}", "scaling: {maxReplicas: 4, hardware: a100}")
    w.edit("scaledownWindow: 300", "scaledownWindow: 1")
    code, out = w.cli("validate")
    assert code == 1, out
    assert "manifests/chat.yaml:9:" in out
    w.edit("scaledownWindow: 1", "scaledownWindow: 300")
    code, out = w.cli("validate")
    assert code == 1, out
    assert "manifests/chat.yaml:8:" in out and "a Modal function's GPU is set in its code" in out
    assert w.md.calls == []


def without_sdk(w: World, *args: str) -> tuple[int, str]:
    """The CLI in a process where `modal` cannot be imported (the extra left out)."""
    code = (
        "import sys, runpy; sys.modules['modal'] = None; "
        "sys.argv = ['reconciler', '--repo', *sys.argv[1:]]; "
        "runpy.run_module('reconciler', run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI"))}
    r = subprocess.run(
        [sys.executable, "-c", code, str(w.repo), *args],
        env={**env, **ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = r.stdout + r.stderr
    assert "Traceback" not in out and SECRET not in out, out
    return r.returncode, out


def test_without_the_sdk_plan_works_and_apply_says_how_to_install_it(w: World) -> None:
    code, out = without_sdk(w, "plan")
    assert code == 0 and "+ deployment.chat" in out, out
    code, out = without_sdk(w, "apply")
    assert code == 1, out
    assert "pip install 'ai-reconciler[modal]'" in out
    assert w.md.calls == []
