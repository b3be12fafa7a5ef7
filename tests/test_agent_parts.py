"""The agent's parts, and what it changed elsewhere, without a long-running process:
notifications to real loopback receivers, the notification targets in force, the
`sync`/`notify` fields of an Environment, heals that can neither move the recorded
state past unapproved commits nor act on a stale reading, and the command's errors."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_world import PROVIDER, SECRETS, deployments, environment
from conftest import commit_all, init_repo, run_cli, write_files
from fakes.deploy_api import FakeDeployApi
from fakes.hooks import HookReceiver
from gate_world import World, chat_tokens, production_model, world

from reconciler import drift as detection
from reconciler.agent.notify import Notice, Notifier
from reconciler.agent.policy import notify_targets, sync_policies
from reconciler.config import ApprovalsConfig, load_settings
from reconciler.errors import StateMovedError
from reconciler.load import load
from reconciler.manifests.models import EnvironmentSpec, NotifyTarget
from reconciler.policy import Policy, policy_document
from reconciler.redaction import Redactor
from reconciler.state import open_state


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


LOCAL = """---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: registry}
spec: {type: local, environments: [dev]}
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat}
spec: {environments: [dev], provider: registry, model: gpt-4o-mini, endpoint: /chat}
"""

# --- notifications ----------------------------------------------------------------------


@pytest.fixture
def hooks() -> Iterator[HookReceiver]:
    with HookReceiver() as receiver:
        yield receiver


def test_each_target_hears_only_its_events_and_a_failing_one_stops_nothing(
    hooks: HookReceiver,
) -> None:
    with HookReceiver() as broken:
        broken.fail = True
        env = {
            "RECONCILER_NOTIFY_ALL": hooks.url("all"),
            "RECONCILER_NOTIFY_BLOCKED": hooks.url("blocked"),
            "RECONCILER_NOTIFY_500": broken.url(),
            "RECONCILER_NOTIFY_DOWN": f"json://127.0.0.1:{_closed_port()}/down",
            "RECONCILER_NOTIFY_NONSENSE": "not a url at all",
        }
        targets = [
            NotifyTarget(url_env="RECONCILER_NOTIFY_500"),
            NotifyTarget(url_env="RECONCILER_NOTIFY_DOWN"),
            NotifyTarget(url_env="RECONCILER_NOTIFY_NONSENSE"),
            NotifyTarget(url_env="RECONCILER_NOTIFY_UNSET"),
            NotifyTarget(url_env="RECONCILER_NOTIFY_ALL"),
            NotifyTarget(url_env="RECONCILER_NOTIFY_BLOCKED", on=["blocked"]),
        ]
        notifier = Notifier(env, Redactor())
        notifier.send(Notice("applied", "dev", "dev applied", "body 1"), targets)
        notifier.send(Notice("blocked", "dev", "dev blocked", "body 2"), targets)
        notifier.close()
        assert len(broken.received()) == 2
    assert [p["title"] for p in hooks.received("all")] == ["dev applied", "dev blocked"]
    assert [(p["title"], p["type"]) for p in hooks.received("blocked")] == [
        ("dev blocked", "warning")
    ]
    assert notifier.sent == 3 and notifier.failed == 6


def test_a_notice_never_carries_a_secret(hooks: HookReceiver) -> None:
    redactor = Redactor()
    redactor.add(["s3cret-value-in-an-error"])
    notifier = Notifier({"RECONCILER_NOTIFY_OPS": hooks.url()}, redactor)
    notice = Notice("failed", "dev", "dev: s3cret-value-in-an-error", "x s3cret-value-in-an-error")
    notifier.send(notice, [NotifyTarget(url_env="RECONCILER_NOTIFY_OPS")])
    notifier.close()
    [got] = hooks.received()
    assert "s3cret-value-in-an-error" not in json.dumps(got)
    assert got["title"] == "dev: (sensitive)" and got["message"] == "x (sensitive)"


def test_a_change_can_add_a_target_but_never_silence_the_recorded_ones(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    spec = "  notify: [{urlEnv: RECONCILER_NOTIFY_OPS, on: [blocked]}]\n  sync: {auto: true}\n"
    write_files(
        repo,
        {
            "manifests/env.yaml": environment("dev", spec) + LOCAL,
            ".gitignore": "*.db\n.reconciler/\n",
        },
    )
    commit_all(repo, "dev")
    r = run_cli(["--repo", str(repo), "--state", "sqlite:///state.db", "apply"])
    assert r.code == 0, r.err
    quiet = "  notify: [{urlEnv: RECONCILER_NOTIFY_OTHER, on: [failed]}]\n  sync: {auto: true}\n"
    write_files(repo, {"manifests/env.yaml": environment("dev", quiet) + LOCAL})
    sha = commit_all(repo, "silence dev's alerts")
    settings = load_settings(repo, state_url="sqlite:///state.db", env={})
    loaded = load(settings, sha)
    assert sync_policies(loaded.desired)["dev"].interval == 300
    store = open_state(settings.state_url, repo_root=repo, env={}, read_only=True)
    try:
        targets = notify_targets(store, loaded.desired, "dev")
    finally:
        store.close()
    assert [(t.url_env, t.on) for t in targets] == [
        ("RECONCILER_NOTIFY_OPS", ["blocked"]),
        ("RECONCILER_NOTIFY_OTHER", ["failed"]),
    ]


# --- the Environment's new fields -------------------------------------------------------


def test_sync_and_notify_are_part_of_the_policy_but_absent_while_unset() -> None:
    before = policy_document(EnvironmentSpec(), ApprovalsConfig())
    assert "sync" not in before["environment"] and "notify" not in before["environment"]
    plain = Policy(EnvironmentSpec(), ApprovalsConfig(), "recorded before the agent")
    again = Policy.from_document(before, "the same, read back")
    assert plain.same_as(again)
    louder = EnvironmentSpec.model_validate({"notify": [{"urlEnv": "RECONCILER_NOTIFY_X"}]})
    synced = EnvironmentSpec.model_validate({"sync": {"auto": True}})
    assert not plain.same_as(Policy(louder, ApprovalsConfig(), "the change"))
    assert not plain.same_as(Policy(synced, ApprovalsConfig(), "the change"))


def test_bad_sync_and_notify_fields_are_reported_with_their_position(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    spec = (
        "  sync: {auto: yes, interval: 0s}\n"
        "  notify:\n"
        "    - {urlEnv: OPENAI_API_KEY}\n"
        "    - {urlEnv: RECONCILER_NOTIFY_OPS, on: [exploded]}\n"
    )
    write_files(repo, {"manifests/env.yaml": environment("dev", spec)})
    commit_all(repo, "bad")
    r = run_cli(["--repo", str(repo), "validate"])
    assert r.code == 1
    out = r.out + r.err
    assert "Traceback" not in out
    assert "manifests/env.yaml:5:16: spec.sync.auto: expected true or false" in out
    assert "manifests/env.yaml:5:31: spec.sync.interval: interval '0s' must be greater" in out
    assert "manifests/env.yaml:7:16: spec.notify.0.urlEnv: 'OPENAI_API_KEY' is not valid" in out
    assert "manifests/env.yaml:8:44: spec.notify.1.on.0: the text 'exploded' is not one" in out


# --- heals ------------------------------------------------------------------------------


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path, source="file") as it:
        yield it


def test_a_heal_does_not_move_the_recorded_state_past_unapproved_commits(w: World) -> None:
    sneaky = w.push("tweak", production_model("llama-3.1-8b-instruct"))
    w.pr(8, [chat_tokens(401, 402)])  # an approved change on top of the unapproved one
    r = w.apply_production()
    assert r.code == 3 and sneaky[:7] in r.out + r.err
    w.api.tamper("deployments", "production", "support-chat", model="changed-by-hand")
    r = w.cli("apply", "--heal", "--env", "production")
    assert r.code == 0, r.out + r.err
    assert w.api.get("deployments", "production", "support-chat")["model"] == "gpt-4o"
    w.forget_requests()
    r = w.apply_production()
    assert r.code == 3, r.out + r.err
    assert sneaky[:7] in r.out + r.err
    assert w.writes() == [], "the unapproved commit reached production after a heal"
    history = json.loads(w.cli("history", "--json", "--env", "production").out)
    assert history[0]["trigger"] == "heal"
    assert history[0]["commit"] == history[1]["commit"], "the heal keeps the applied commit"


def test_a_heal_on_a_stale_reading_is_refused(tmp_path: Path) -> None:
    with FakeDeployApi(token=SECRETS["REGISTRY_TOKEN"]) as api:
        repo = init_repo(tmp_path / "repo")
        write_files(
            repo,
            {
                "manifests/env.yaml": environment("dev", "  description: d\n"),
                "manifests/provider.yaml": PROVIDER % {"envs": "dev", "url": api.url},
                ".gitignore": ".reconciler/\n",
                **deployments(["chat"]),
            },
        )
        commit_all(repo, "chat")
        assert run_cli(["--repo", str(repo), "apply"], env=SECRETS).code == 0
        api.tamper("deployments", "dev", "chat", model="changed-by-hand")
        settings = load_settings(repo, env=SECRETS)
        loaded = load(settings)
        store = open_state(settings.state_url, repo_root=repo, env=SECRETS)
        try:
            reading = detection.detect_drift(
                store, loaded.desired.providers, repo_root=repo, env=SECRETS
            )
            assert [i.address for i in reading.drifted] == ["deployment.chat"]
            # meanwhile a run records a change: the reading no longer says what to heal
            write_files(repo, deployments(["chat", "search"]))
            commit_all(repo, "search")
            assert run_cli(["--repo", str(repo), "apply"], env=SECRETS).code == 0
            with pytest.raises(StateMovedError, match="moved since the plan"):
                detection.heal(
                    store,
                    reading,
                    loaded.desired.providers,
                    repo_root=repo,
                    env=SECRETS,
                )
        finally:
            store.close()
        assert api.get("deployments", "dev", "chat")["model"] == "changed-by-hand"


# --- the command ------------------------------------------------------------------------


def test_the_agent_refuses_a_directory_that_is_not_a_clone(tmp_path: Path) -> None:
    r = run_cli(["--repo", str(tmp_path), "agent", "--port", "0"])
    assert r.code == 1
    assert r.err.startswith("error: ") and "not a git repository" in r.err
    assert "Traceback" not in r.err


def test_the_agent_refuses_a_bad_duration(tmp_path: Path) -> None:
    r = run_cli(["--repo", str(tmp_path), "agent", "--stall-after", "soon"])
    assert r.code == 1 and "--stall-after" in r.err and "Traceback" not in r.err


def test_the_agent_refuses_a_clone_directory_that_holds_something_else(tmp_path: Path) -> None:
    (tmp_path / "clone").mkdir()
    (tmp_path / "clone" / "notes.txt").write_text("mine\n")
    r = run_cli(
        ["agent", "--clone", str(tmp_path / "clone"), "--remote", str(tmp_path / "nowhere")],
        cwd=tmp_path,
    )
    assert r.code == 1 and "neither empty nor a git repository" in r.err
    assert (tmp_path / "clone" / "notes.txt").read_text() == "mine\n"
