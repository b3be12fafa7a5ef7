"""Two agents, real processes on one PostgreSQL state, fire an applied schedule exactly
once: whichever records the fire key first runs it, the other finds it taken. Their
clocks are set with libfaketime a few seconds before the fire, as in
test_agent_fire.py, so no test waits for a real minute."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from agent_world import PROVIDER, TOKEN, AgentProcess, Remote, deployments, environment
from fakes.deploy_api import FakeDeployApi

from reconciler.runs.model import Query
from reconciler.runs.store import open_executions

LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
START = "2030-01-07 10:00:00"  # UTC; the schedule fires at 10:01:00
NEARLY = "2030-01-07 10:00:59"  # where the clocks are moved once the schedule is applied
SCHEDULE = """apiVersion: reconciler/v1
kind: Schedule
metadata: {name: ten-past}
spec:
  environments: [dev]
  deployment: chat
  cron: "1 10 * * *"
  input: {question: "who fires me?"}
  concurrency: allow
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


def test_two_agents_on_one_postgres_fire_a_schedule_once(
    tmp_path: Path, api: FakeDeployApi, postgres_url: str
) -> None:
    remote = Remote(tmp_path)
    remote.push(
        {
            "manifests/env.yaml": environment("dev", "  sync: {auto: true, interval: 1s}\n"),
            "manifests/provider.yaml": PROVIDER % {"envs": "dev", "url": api.url},
            "manifests/schedule.yaml": SCHEDULE,
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
            # the other agent found the fire recorded (its key taken) and ran nothing
            agents[0].wait_until(
                lambda: sum(len(a.events("schedule.fire_taken")) for a in agents) == 1,
                "one agent found the fire taken",
            )
            (ex,) = store.find(Query(("dev",), limit=None))
        finally:
            store.close()
        assert ex.trigger == "schedule" and ex.fire_key is not None
        assert api.runs == [("dev", "chat", {"question": "who fires me?"})]  # called once
        fired = [a for a in agents if a.metric(
            "reconciler_executions_total", environment="dev", deployment="chat",
            status="completed") == 1]  # fmt: skip
        assert len(fired) == 1
        for agent in agents:
            assert agent.terminate() == 0
