"""`reconciler agent` as a real process on a real PostgreSQL state, fetching a real git
remote and applying to the fake deployment API on 127.0.0.1, telling a real HTTP
receiver (through apprise's json://): a push is applied within one interval, drift made
by hand at the provider is healed, a blocked environment is reported once per new
commit, SIGTERM mid-apply loses nothing, and two agents never apply one environment at
once."""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from agent_world import (
    PROVIDER,
    SECRETS,
    VENDOR,
    AgentProcess,
    Remote,
    at,
    deployments,
    environment,
    runs,
)
from fakes.deploy_api import FakeDeployApi
from fakes.hooks import HookReceiver

from reconciler.state import open_state

pytestmark = pytest.mark.slow

DEV = """  sync: {auto: true, interval: 0.5s, selfHeal: true, driftInterval: 0.5s}
  notify:
    - urlEnv: RECONCILER_NOTIFY_OPS
    - {urlEnv: RECONCILER_NOTIFY_BROKEN, on: [applied]}
"""


@pytest.fixture
def api() -> Iterator[FakeDeployApi]:
    with FakeDeployApi(token=SECRETS["REGISTRY_TOKEN"]) as server:
        yield server


@pytest.fixture
def hooks() -> Iterator[HookReceiver]:
    with HookReceiver() as receiver:
        yield receiver


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _notify_env(hooks: HookReceiver) -> dict[str, str]:
    broken = f"json://agent:hunter2-notify-secret@127.0.0.1:{_closed_port()}/down"
    return {"RECONCILER_NOTIFY_OPS": hooks.url(), "RECONCILER_NOTIFY_BROKEN": broken}


def _dev_repo(tmp_path: Path, api: FakeDeployApi, names: list[str]) -> tuple[Remote, str]:
    remote = Remote(tmp_path)
    first = remote.push(
        {
            "manifests/env.yaml": environment("dev", DEV),
            "manifests/provider.yaml": PROVIDER % {"envs": "dev", "url": api.url},
            ".gitignore": ".reconciler/\n",
            **deployments(names),
        },
        "dev with " + ", ".join(names),
    )
    return remote, first


def _applied(state: str, root: Path, commit: str) -> bool:
    return any(r.commit == commit and r.outcome == "applied" for r in runs(state, root, "dev"))


def test_a_push_is_applied_within_one_interval(
    tmp_path: Path, postgres_url: str, api: FakeDeployApi, hooks: HookReceiver
) -> None:
    remote, first = _dev_repo(tmp_path, api, ["chat"])
    clone = tmp_path / "clone"
    with AgentProcess(remote, clone, postgres_url, env=_notify_env(hooks)) as agent:
        agent.wait_until(lambda: _applied(postgres_url, clone, first), "the first commit applied")
        checks = agent.metric("reconciler_agent_sync_checks_total", environment="dev")
        agent.wait_until(
            lambda: (
                agent.metric("reconciler_agent_sync_checks_total", environment="dev") >= checks + 2
            ),
            "two more passes",
        )
        second = remote.push(deployments(["chat", "search"]), "add search")
        pushed = datetime.now(UTC)
        agent.wait_until(lambda: _applied(postgres_url, clone, second), "the push applied")
        agent.wait_for_line(lambda line: '"applied"' in line and second in line)

        # Applied by the first pass that began after the push (or by one already under
        # way): the second pass after the push began only once it was applied.
        after = [e for e in agent.events("sync check") if at(e) > pushed]
        assert after and all(e["commit"] == second for e in after)
        applied = next(e for e in agent.events("applied") if e["commit"] == second)
        assert len(after) < 2 or at(after[1]) > at(applied)

        run = next(r for r in runs(postgres_url, clone, "dev") if r.commit == second)
        assert run.trigger == "agent" and run.details.get("agent") is True
        assert api.get("deployments", "dev", "search") is not None
        assert sum(api.create_count.values()) == 2

        health = agent.get("/healthz")
        assert health.status_code == 200, health.text
        doc = health.json()
        assert doc["status"] == "ok" and doc["commit"] == second
        assert doc["environments"]["dev"]["lastSync"] is not None
        assert (
            agent.metric(
                "reconciler_agent_runs_total", environment="dev", trigger="agent", outcome="applied"
            )
            == 2
        )
        assert (
            agent.metric(
                "reconciler_agent_changes_total",
                environment="dev",
                action="create",
                outcome="applied",
            )
            == 2
        )
        assert agent.metric("reconciler_apply_duration_seconds_count", environment="dev") == 2
        assert (
            agent.metric("reconciler_last_successful_sync_timestamp_seconds", environment="dev")
            >= pushed.timestamp()
        )

        def dashboard_history() -> list[str]:
            r = agent.get("/api/history")
            return [run["trigger"] for run in json.loads(r.text)] if r.status_code == 200 else []

        agent.wait_until(lambda: dashboard_history() == ["agent", "agent"], "the dashboard")

        notices = hooks.wait_for(lambda got: len(got) >= 2)
        assert [n["type"] for n in notices] == ["success", "success"]
        assert "dev applied" in notices[1]["title"] and second[:12] in notices[1]["message"]
        assert agent.terminate() == 0
    out = agent.output()
    assert "hunter2-notify-secret" not in out and VENDOR not in out and "Traceback" not in out
    assert "RECONCILER_NOTIFY_BROKEN" in out, "the broken target is named in the log"


def test_drift_made_by_hand_at_the_provider_is_healed(
    tmp_path: Path, postgres_url: str, api: FakeDeployApi, hooks: HookReceiver
) -> None:
    remote, first = _dev_repo(tmp_path, api, ["chat", "search"])
    clone = tmp_path / "clone"
    with AgentProcess(remote, clone, postgres_url, env=_notify_env(hooks)) as agent:
        agent.wait_until(lambda: _applied(postgres_url, clone, first), "the commit applied")
        api.tamper("deployments", "dev", "chat", options={"temperature": 0.9})
        api.remove("deployments", "dev", "search")
        agent.wait_until(
            lambda: (
                (api.get("deployments", "dev", "chat") or {}).get("options") == {"temperature": 0.2}
                and api.get("deployments", "dev", "search") is not None
            ),
            "drift healed",
        )

        def healed() -> set[str]:
            heals = [r for r in runs(postgres_url, clone, "dev") if r.trigger == "heal"]
            if any(r.outcome != "applied" for r in heals):
                return set()
            return {c.key.name for r in heals for c in r.changes if c.outcome == "applied"}

        # the two edits may be seen by one drift check or by two: one heal run or two
        agent.wait_until(lambda: healed() == {"chat", "search"}, "the heals recorded")
        heals = [r for r in runs(postgres_url, clone, "dev") if r.trigger == "heal"]
        assert {r.commit for r in heals} == {first}, "a heal records the commit it puts back"
        notices = hooks.wait_for(
            lambda got: len([n for n in got if n["title"].endswith("healed")]) == len(heals)
        )
        drifted = "\n".join(n["message"] for n in notices if "drifted" in n["title"])
        assert "deployment.chat: options.temperature differ" in drifted
        assert "deployment.search: missing" in drifted
        assert "selfHeal is on" in drifted
        agent.wait_until(
            lambda: (
                agent.metric(
                    "reconciler_agent_runs_total",
                    environment="dev",
                    trigger="heal",
                    outcome="applied",
                )
                == len(heals)
            ),
            "the heals counted",
        )
        assert agent.metric("reconciler_drifted_instances", environment="dev") == 0
        assert agent.terminate() == 0
    assert "Traceback" not in agent.output()


def test_drift_reads_with_the_provider_settings_of_the_applied_commit(
    tmp_path: Path, postgres_url: str, api: FakeDeployApi
) -> None:
    """A push that only points the provider at another host changes no plan, so no
    gate looks at it: drift and heal must still read and write where the recorded
    objects were written, never send the credential to the new host."""
    remote, first = _dev_repo(tmp_path, api, ["chat"])
    clone = tmp_path / "clone"
    with FakeDeployApi() as elsewhere, AgentProcess(remote, clone, postgres_url) as agent:
        agent.wait_until(lambda: _applied(postgres_url, clone, first), "the commit applied")
        remote.push(
            {"manifests/provider.yaml": PROVIDER % {"envs": "dev", "url": elsewhere.url}},
            "point the provider elsewhere",
        )

        def checks(name: str) -> float:
            return agent.metric(f"reconciler_agent_{name}_total", environment="dev")

        synced, drifted = checks("sync_checks"), checks("drift_checks")
        agent.wait_until(
            lambda: checks("sync_checks") >= synced + 3 and checks("drift_checks") >= drifted + 3,
            "three passes and drift checks after the push",
        )
        api.tamper("deployments", "dev", "chat", options={"temperature": 0.9})
        agent.wait_until(
            lambda: (
                (api.get("deployments", "dev", "chat") or {}).get("options") == {"temperature": 0.2}
            ),
            "drift healed where the object lives",
        )
        assert elsewhere.requests == [], "the credential went where nobody approved"
        assert agent.terminate() == 0
    assert "Traceback" not in agent.output()


PRODUCTION = """  protected: true
  approvals: {required: 1}
  sync: {auto: true, interval: 0.25s}
  notify: [{urlEnv: RECONCILER_NOTIFY_OPS, on: [blocked, applied]}]
"""


def test_a_blocked_environment_is_reported_once_per_new_commit(
    tmp_path: Path, postgres_url: str, api: FakeDeployApi, hooks: HookReceiver
) -> None:
    remote = Remote(tmp_path)
    files = {
        "reconciler.yaml": "approvals: {source: file}\n",
        "manifests/env.yaml": environment("production", PRODUCTION),
        "manifests/provider.yaml": PROVIDER % {"envs": "production", "url": api.url},
        **deployments(["chat"], envs="production"),
    }
    first = remote.push(files, "production")
    approvals = tmp_path / "approvals.json"  # outside the repo: no pull request approves
    approvals.write_text(json.dumps({"version": 1}))
    env = {"RECONCILER_NOTIFY_OPS": hooks.url(), "RECONCILER_APPROVALS_FILE": str(approvals)}
    clone = tmp_path / "clone"

    def checks() -> float:
        return agent.metric("reconciler_agent_sync_checks_total", environment="production")

    with AgentProcess(remote, clone, postgres_url, env=env) as agent:
        agent.wait_until(lambda: checks() >= 4, "four passes")
        got = hooks.wait_for(lambda got: len(got) >= 1)
        assert len(got) == 1, "reported once, not at every pass"
        assert got[0]["type"] == "warning" and first[:12] in got[0]["title"]
        assert "needs 1 approval" in got[0]["message"] and "not covered" in got[0]["message"]
        assert agent.metric("reconciler_environment_blocked", environment="production") == 1
        assert agent.metric("reconciler_blocked_environments") == 1
        assert agent.get("/healthz").json()["environments"]["production"]["blocked"] is True

        second = remote.push(deployments(["chat"], envs="production", model="gpt-4o"), "bump")
        now = checks()
        agent.wait_until(lambda: checks() >= now + 4, "four more passes")
        got = hooks.wait_for(lambda got: len(got) >= 2)  # sent from the notifier's thread
        assert len(got) == 2, got
        assert second[:12] in got[1]["title"] and "needs 1 approval" in got[1]["message"]
        assert len(agent.events("blocked")) == 2
        assert agent.terminate() == 0
    assert api.objects() == [] and runs(postgres_url, clone) == []


def test_sigterm_mid_apply_loses_nothing(
    tmp_path: Path, postgres_url: str, api: FakeDeployApi
) -> None:
    names = [f"svc-{i:02d}" for i in range(20)]
    remote, _ = _dev_repo(tmp_path, api, names)
    remote.push({"reconciler.yaml": "parallelism: 2\n"}, "two at a time")
    api.latency = 0.4
    clone = tmp_path / "clone"
    with AgentProcess(remote, clone, postgres_url) as agent:
        agent.wait_until(lambda: sum(api.create_count.values()) >= 3, "three created")
        assert agent.terminate() == 0
    out = agent.output()
    assert "stopped mid-run" in out and "Traceback" not in out
    live = {o["name"]: o["id"] for o in api.objects()}
    assert 3 <= len(live) < len(names), "it stopped before the end"

    store = open_state(postgres_url, repo_root=clone, env={}, read_only=True)
    try:
        recorded = {k.name: r.provider_id for k, r in store.applied("dev").items()}
        assert recorded == live, "everything that reached the provider is recorded"
        assert store.lock_holder("dev") is None
        [run] = store.runs("dev")
        assert run.outcome == "interrupted" and run.trigger == "agent"
        assert len(run.changes) == len(live)
    finally:
        store.close()

    api.latency = 0.0
    with AgentProcess(remote, clone, postgres_url) as again:
        again.wait_until(lambda: len(api.objects()) == len(names), "the rest applied")
        again.wait_until(
            lambda: any(r.outcome == "applied" for r in runs(postgres_url, clone, "dev")),
            "the run recorded",
        )
        assert again.terminate() == 0
    assert set(api.create_count.values()) == {1}, "each created exactly once"


def test_two_agents_on_one_postgres_never_apply_one_environment_at_once(
    tmp_path: Path, postgres_url: str, api: FakeDeployApi
) -> None:
    names = [f"svc-{i:02d}" for i in range(6)]
    remote, first = _dev_repo(tmp_path, api, names)
    api.latency = 0.2
    with (
        AgentProcess(remote, tmp_path / "a", postgres_url) as a,
        AgentProcess(remote, tmp_path / "b", postgres_url, "--no-dashboard") as b,
    ):
        a.wait_until(lambda: _applied(postgres_url, tmp_path / "a", first), "applied")
        second = remote.push(deployments(names, model="gpt-4o"), "everyone on gpt-4o")
        a.wait_until(lambda: _applied(postgres_url, tmp_path / "a", second), "the push applied")
        assert b.get("/").status_code == 404 and b.get("/healthz").status_code == 200
        assert a.terminate() == 0 and b.terminate() == 0
    writes = [(r.method, r.path) for r in api.requests if r.method != "GET"]
    assert sum(1 for m, _ in writes if m == "POST") == len(names), writes
    assert sum(1 for m, _ in writes if m == "PUT") == len(names), writes
    recorded = sorted(
        (r.started_at, r.finished_at or datetime.max.replace(tzinfo=UTC))
        for r in runs(postgres_url, tmp_path / "a", "dev")
    )
    assert len(recorded) >= 2
    for (_, end), (start, _) in itertools.pairwise(recorded):
        assert end <= start, "two runs of dev overlapped"
    assert "Traceback" not in a.output() + b.output()


def test_a_commit_that_does_not_load_is_reported_once_and_the_next_one_applied(
    tmp_path: Path, postgres_url: str, api: FakeDeployApi, hooks: HookReceiver
) -> None:
    remote, first = _dev_repo(tmp_path, api, ["chat"])
    clone = tmp_path / "clone"

    def checks() -> float:
        return agent.metric("reconciler_agent_sync_checks_total", environment="dev")

    with AgentProcess(remote, clone, postgres_url, env=_notify_env(hooks)) as agent:
        agent.wait_until(lambda: _applied(postgres_url, clone, first), "the commit applied")
        broken = remote.push({"manifests/chat.yaml": "kind: [unclosed\n"}, "oops")
        agent.wait_until(
            lambda: agent.metric("reconciler_agent_fetches_total", outcome="invalid") >= 3,
            "three fetches of the broken commit",
        )
        before = checks()
        fixed = remote.push(deployments(["chat"], model="gpt-4o"), "fixed")
        agent.wait_until(lambda: _applied(postgres_url, clone, fixed), "the fix applied")
        assert checks() > before
        failed = [n for n in hooks.received() if n["type"] == "failure"]
        assert len(failed) == 1 and broken[:12] in failed[0]["message"]
        assert "manifests/chat.yaml:2:1: did not find expected" in failed[0]["message"]
        assert len(agent.events("cannot load the deploy branch")) == 1
        assert agent.terminate() == 0
