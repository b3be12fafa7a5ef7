"""The agent as a real process runs a Check again at its `interval` on what is applied.
Its clock is set with libfaketime through a timestamp file the test rewrites (an offset
from the real time), so a 15-minute interval passes at once: nothing here waits for it.

A failed re-check is recorded (trigger `check`), told to the notification target with
what was measured, counted on /metrics, and revokes the deployment's promotion (the gate
counts failed checks since it was applied); passing again is told too. Two agents on
one PostgreSQL database run a due re-check once."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_world import PROVIDER, TOKEN, AgentProcess, Remote, deployments, environment
from conftest import run_cli
from fakes.deploy_api import FakeDeployApi
from fakes.hooks import HookReceiver

from reconciler.runs.model import Execution, Query
from reconciler.runs.store import open_executions

LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
CHECK = """apiVersion: reconciler/v1
kind: Check
metadata: {name: smoke}
spec:
  deployment: chat
  environments: [staging]
  interval: 15m
  requests:
    - input: {question: "refund?"}
      expect: {contains: [refund], latencyMsMax: 30000}
"""
STAGING = """  sync: {auto: true, interval: 1s, driftInterval: 1h}
  notify: [{urlEnv: RECONCILER_NOTIFY_OPS, on: [check_failed, check_recovered]}]
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not LIB.exists() or shutil.which("faketime") is None, reason="libfaketime is not installed"
    ),
]


@pytest.fixture
def api() -> Iterator[FakeDeployApi]:
    with FakeDeployApi(token=TOKEN) as server:
        yield server


@pytest.fixture
def hooks() -> Iterator[HookReceiver]:
    with HookReceiver() as receiver:
        yield receiver


class FakeTime:
    """The agents' clock: the real time plus an offset the test moves."""

    def __init__(self, root: Path) -> None:
        self.file = root / "faketime"
        self.set("+0s")

    def set(self, offset: str) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        os.replace(tmp, self.file)  # never read half written

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(LIB),
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # timed waits stay real
            "TZ": "UTC",
        }


def push_world(remote: Remote, api: FakeDeployApi) -> None:
    remote.push(
        {
            "manifests/staging.yaml": environment("staging", STAGING),
            "manifests/production.yaml": environment(
                "production", "  promotion: {from: staging}\n"
            ),
            "manifests/provider.yaml": PROVIDER % {"envs": "staging, production", "url": api.url},
            "manifests/check.yaml": CHECK,
            ".gitignore": ".reconciler/\n",
            **deployments(["chat"], envs="staging, production"),
        },
        "chat in staging, checked every 15m",
    )


def checks(state: str, root: Path) -> list[Execution]:
    store = open_executions(state, repo_root=root, env={})
    try:
        found = store.find(Query(("staging",), limit=None))
    finally:
        store.close()
    return [e for e in found if e.trigger == "check" and e.status not in ("pending", "running")]


def test_a_failed_recheck_is_recorded_notified_counted_and_revokes_promotion(
    tmp_path: Path, api: FakeDeployApi, hooks: HookReceiver, postgres_url: str
) -> None:
    remote = Remote(tmp_path)
    push_world(remote, api)
    clock = FakeTime(tmp_path)
    clone = tmp_path / "clone"
    env = {**clock.env(), "RECONCILER_NOTIFY_OPS": hooks.url()}
    with AgentProcess(remote, clone, postgres_url, env=env) as agent:
        agent.wait_until(
            lambda: [e.passed for e in checks(postgres_url, clone)] == [True],
            "the check after apply recorded passing",
        )
        assert agent.events("check.recheck") == []
        # the deployment starts answering without the word the check looks for
        api.tamper("deployments", "staging", "chat", runOutput="we are closed today")
        clock.set("+16m")
        agent.wait_until(lambda: len(checks(postgres_url, clone)) == 2, "the re-check recorded")
        (failed, _) = checks(postgres_url, clone)
        assert failed.passed is False and failed.check == "smoke" and failed.fire_time
        measured = {x["name"]: x["measured"] for x in failed.expectations}
        assert measured["contains"] == "we are closed today"

        (notice,) = hooks.wait_for(lambda got: len(got) >= 1)
        assert notice["type"] == "failure"
        assert "check smoke failed on deployment.chat" in notice["title"]
        assert "contains: expected 'refund', measured 'we are closed today'" in notice["message"]
        assert "latencyMsMax" not in notice["message"], "only what failed is told"
        labels = {"environment": "staging", "deployment": "chat", "check": "smoke"}
        assert agent.metric("reconciler_check_runs_total", **labels, outcome="failed") == 1
        assert agent.metric("reconciler_check_latency_seconds_count", **labels) == 1
        failed_contains = agent.metric(
            "reconciler_check_failed_expectations_total", **labels, expectation="contains"
        )
        assert failed_contains == 1

        # promotion to production is revoked: the gate counts the failure
        plan = run_cli(
            ["--repo", str(remote.work), "--state", postgres_url, "plan", "--env", "production"],
            env={"REGISTRY_TOKEN": TOKEN},
        )
        assert "Traceback" not in plan.err, plan.err
        assert "deployment.chat failed 1 check request(s) in staging since it was applied" in (
            plan.out
        ), plan.out + plan.err

        # it answers well again: the next re-check passes, and says so once
        api.tamper("deployments", "staging", "chat", runOutput=None)
        clock.set("+31m")
        got = hooks.wait_for(lambda got: len(got) >= 2)
        assert got[1]["type"] == "success" and "passes again" in got[1]["title"]
        assert [e.passed for e in checks(postgres_url, clone)] == [True, False, True]
        assert agent.metric("reconciler_check_runs_total", **labels, outcome="passed") == 1
        assert agent.terminate() == 0
    out = agent.output()
    assert TOKEN not in out and "Traceback" not in out
    assert len(hooks.received()) == 2


def test_two_agents_on_one_database_run_a_due_recheck_once(
    tmp_path: Path, api: FakeDeployApi, postgres_url: str
) -> None:
    remote = Remote(tmp_path)
    push_world(remote, api)
    clock = FakeTime(tmp_path)
    a_clone, b_clone = tmp_path / "a", tmp_path / "b"
    with (
        AgentProcess(remote, a_clone, postgres_url, env=clock.env()) as a,
        AgentProcess(remote, b_clone, postgres_url, env=clock.env()) as b,
    ):
        a.wait_until(
            lambda: [e.passed for e in checks(postgres_url, a_clone)] == [True],
            "the check after apply recorded passing",
        )
        clock.set("+16m")

        def both_looked() -> bool:
            seen = [
                ag.events("check.recheck") + ag.events("check.recheck_elsewhere") for ag in (a, b)
            ]
            return all(seen)

        a.wait_until(both_looked, "both agents looked at the due re-check")
        ran = a.events("check.recheck") + b.events("check.recheck")
        elsewhere = a.events("check.recheck_elsewhere") + b.events("check.recheck_elsewhere")
        assert len(ran) == 1 and len(elsewhere) == 1
        assert ran[0]["due"] == elsewhere[0]["due"]
        assert ran[0]["outcome"] == "passed"
        done = checks(postgres_url, a_clone)
        assert [e.passed for e in done] == [True, True]
        assert len([e for e in done if e.fire_time is not None]) == 1
        assert [r[:2] for r in api.runs] == [("staging", "chat")] * 2
        assert a.terminate() == 0 and b.terminate() == 0
