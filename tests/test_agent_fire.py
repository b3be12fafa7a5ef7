"""The agent as a real process fires an applied schedule at its time, and two agents on
one PostgreSQL state fire it exactly once. The agents' clock is set with libfaketime
(the process's own clock, nothing patched inside), read from a file: it starts well
before the fire, and once the schedule is applied the test moves it to a second
before, so no test waits for the clock to come round."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import pytest
from agent_world import PROVIDER, TOKEN, AgentProcess, Remote, deployments, environment
from fakes.deploy_api import FakeDeployApi

from reconciler.runs.model import Query
from reconciler.runs.store import open_executions

LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
START = "2030-01-07 10:00:00"  # UTC; the schedule fires at 10:01:00
NEARLY = "2030-01-07 10:00:59"  # where the clock is moved once the schedule is applied
SCHEDULE = """apiVersion: reconciler/v1
kind: Schedule
metadata: {name: ten-past}
spec:
  environments: [dev]
  deployment: chat
  cron: "1 10 * * *"
  input: {question: "are we there yet?"}
  concurrency: forbid
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


def world(
    tmp_path: Path, api: FakeDeployApi, schedule: str = SCHEDULE
) -> tuple[Remote, Path, dict[str, str]]:
    """The remote with `chat` fired ten past, and a clock file the agents read their time
    from (at START; the test moves it to NEARLY once the schedule is applied)."""
    remote = Remote(tmp_path)
    remote.push(
        {
            "manifests/env.yaml": environment("dev", "  sync: {auto: true, interval: 1s}\n"),
            "manifests/provider.yaml": PROVIDER % {"envs": "dev", "url": api.url},
            "manifests/schedule.yaml": schedule,
            ".gitignore": ".reconciler/\n",
            **deployments(["chat"]),
        },
        "chat, fired ten past",
    )
    when = tmp_path / "faketime"
    when.write_text(f"@{START}\n")
    clock = {
        "LD_PRELOAD": str(LIB),
        "FAKETIME_TIMESTAMP_FILE": str(when),
        "FAKETIME_CACHE_DURATION": "1",  # the file is read again at most a second later
        "TZ": "UTC",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # timed waits stay real
    }
    return remote, when, clock


def test_the_agent_fires_a_schedule_at_its_time(
    tmp_path: Path, api: FakeDeployApi, postgres_url: str
) -> None:
    remote, when, clock = world(tmp_path, api)
    clone = tmp_path / "clone"
    with AgentProcess(remote, clone, postgres_url, env=clock) as agent:
        applied = agent.wait_for_line(lambda line: '"event": "applied"' in line)
        assert json.loads(applied)["timestamp"] < "2030-01-07T10:01", applied
        assert not api.runs
        when.write_text(f"@{NEARLY}\n")
        assert api.run_arrived.wait(60), agent.output()[-4000:]
        started = agent.events("schedule.fire")
        assert started and started[0]["fire_time"].startswith("2030-01-07T10:01:00")
        store = open_executions(postgres_url, repo_root=clone, env={})
        try:
            agent.wait_until(
                lambda: [e.status for e in store.find(Query(("dev",)))] == ["completed"],
                "the fire recorded completed",
            )
            (ex,) = store.find(Query(("dev",)))
        finally:
            store.close()
        assert ex.trigger == "schedule" and ex.schedule == "ten-past"
        assert ex.fire_time == datetime.fromisoformat("2030-01-07T10:01:00+00:00")
        assert ex.started_at is not None and ex.started_at >= ex.fire_time
        assert api.runs == [("dev", "chat", {"question": "are we there yet?"})]
        labels = {"environment": "dev", "deployment": "chat"}
        assert agent.metric("reconciler_executions_total", **labels, status="completed") == 1
        assert agent.metric("reconciler_execution_latency_seconds_count", **labels) == 1
        assert agent.terminate() == 0


def test_two_agents_on_one_postgres_fire_a_schedule_once(
    tmp_path: Path, api: FakeDeployApi, postgres_url: str
) -> None:
    """Whichever agent records the fire key first runs it; the other finds it taken."""
    remote, when, clock = world(tmp_path, api, SCHEDULE.replace("forbid", "allow"))
    with ExitStack() as stack:
        agents = [
            stack.enter_context(
                AgentProcess(remote, tmp_path / f"clone-{i}", postgres_url, env=clock)
            )
            for i in range(2)
        ]
        agents[0].wait_until(
            lambda: any(a.events("applied") for a in agents), "one agent applied the schedule"
        )
        assert not api.runs
        when.write_text(f"@{NEARLY}\n")  # both clocks: a second before the fire
        assert api.run_arrived.wait(60), agents[0].output()[-4000:]
        store = open_executions(postgres_url, repo_root=tmp_path / "clone-0", env={})
        try:
            agents[0].wait_until(
                lambda: [e.status for e in store.find(Query(("dev",)))] == ["completed"],
                "the fire recorded completed",
            )
            agents[0].wait_until(
                lambda: sum(len(a.events("schedule.fire_taken")) for a in agents) == 1,
                "the other agent found the fire taken",
            )
            (ex,) = store.find(Query(("dev",), limit=None))
        finally:
            store.close()
        assert ex.trigger == "schedule" and ex.fire_key is not None
        assert api.runs == [("dev", "chat", {"question": "are we there yet?"})]  # once
        labels = {"environment": "dev", "deployment": "chat", "status": "completed"}
        fired = [a for a in agents if a.metric("reconciler_executions_total", **labels) == 1]
        assert len(fired) == 1
        for agent in agents:
            assert agent.terminate() == 0
