"""Schedules fire (reconciler/runs/fire.py) with an injected clock: at their time, once,
with their input; missed fires late or `missed`; concurrency forbid and replace; a
suspended deployment's fires skipped; exactly once with two processes on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import commit_all
from fakes.deploy_api import FakeDeployApi
from run_world import TOKEN, cli, make_repo

from reconciler.config import load_settings
from reconciler.engine.live import ProvidersOfRecord
from reconciler.instances import InstanceKey
from reconciler.runs.fire import FireEngine
from reconciler.runs.model import Execution, Query
from reconciler.runs.store import open_executions
from reconciler.schedules import spec_next_runs
from reconciler.session import Session
from reconciler.state import open_state

ROOT = Path(__file__).resolve().parent


def schedule(concurrency: str = "allow", extra: str = "") -> str:
    return (
        "apiVersion: reconciler/v1\nkind: Schedule\nmetadata: {name: digest}\nspec:\n"
        "  environments: [dev, prod]\n  deployment: chat\n  interval: 10m\n"
        f"  input: {{question: 'digest?'}}\n  concurrency: {concurrency}\n{extra}"
    )


@dataclass
class World:
    repo: Path
    api: FakeDeployApi
    state_url: str = "sqlite:///.reconciler/state.db"

    def engine(self) -> FireEngine:
        store = open_executions(self.state_url, repo_root=self.repo, env={})
        return FireEngine(self.settings(), store, parallelism=4)

    def settings(self):  # type: ignore[no-untyped-def]
        return load_settings(self.repo, state_url=self.state_url, env={"REGISTRY_TOKEN": TOKEN})

    def tick(self, engine: FireEngine, now: datetime, *, wait: bool = True) -> list[Execution]:
        """Prod's executions started by one tick (dev's fire too, on the local provider)."""
        settings = engine.settings
        state = open_state(settings.state_url, repo_root=self.repo, env=settings.env)
        try:
            providers = ProvidersOfRecord(Session.start(settings)).get(state)
            futures = engine.tick(state, providers, now)
            done = [f.result(60) for f in futures] if wait else []
            return [ex for ex in done if ex.environment == "prod"]
        finally:
            state.close()

    def executions(self, env: str = "prod") -> list[Execution]:
        store = open_executions(self.state_url, repo_root=self.repo, env={})
        try:
            return store.find(Query((env,), limit=None))
        finally:
            store.close()

    def first_fire(self, env: str = "prod") -> datetime:
        """The schedule's first fire time after it was applied."""
        state = open_state(self.state_url, repo_root=self.repo, env={}, read_only=True)
        try:
            key = InstanceKey(env, "Schedule", "digest")
            rec = state.applied(env, [key])[key]
        finally:
            state.close()
        return spec_next_runs(rec.spec, rec.applied_at, 1)[0]


@pytest.fixture
def api() -> Iterator[FakeDeployApi]:
    with FakeDeployApi(token=TOKEN) as server:
        yield server


def world(tmp_path: Path, api: FakeDeployApi, sched: str) -> World:
    repo = make_repo(tmp_path / "repo", api.url, schedules=sched)
    assert cli(repo, "apply").code == 0
    return World(repo, api)


def test_a_schedule_fires_at_its_time_once_with_its_input(
    tmp_path: Path, api: FakeDeployApi
) -> None:
    w = world(tmp_path, api, schedule())
    engine = w.engine()
    try:
        t = w.first_fire()
        assert w.tick(engine, t - timedelta(seconds=1)) == []
        (ex,) = w.tick(engine, t)
        assert (ex.status, ex.trigger, ex.schedule, ex.fire_time) == (
            "completed", "schedule", "digest", t,
        )  # fmt: skip
        assert api.runs == [("prod", "chat", {"question": "digest?"})]
        assert w.tick(engine, t + timedelta(seconds=5)) == []
        assert w.tick(w.engine(), t + timedelta(seconds=5)) == []  # a new engine too
        (dev,) = w.executions("dev")
        assert dev.result == "Answer briefly: digest?"
    finally:
        engine.close()
    listed = json.loads(cli(w.repo, "executions", "--env", "prod", "--json").out)
    assert [(e["trigger"], e["schedule"]) for e in listed] == [("schedule", "digest")]


def test_a_fire_missed_while_nothing_ran_runs_late(tmp_path: Path, api: FakeDeployApi) -> None:
    w = world(tmp_path, api, schedule())
    engine = w.engine()
    try:
        t = w.first_fire()
        late = t + timedelta(minutes=25)  # fires at t, t+10m, t+20m were missed
        got = w.tick(engine, late)
        assert [(e.fire_time, e.status) for e in got] == [(t + timedelta(minutes=20), "completed")]
        statuses = sorted((e.fire_time, e.status) for e in w.executions())
        assert statuses == [
            (t, "missed"), (t + timedelta(minutes=10), "missed"),
            (t + timedelta(minutes=20), "completed"),
        ]  # fmt: skip
    finally:
        engine.close()


def test_past_its_starting_deadline_a_fire_is_recorded_missed(
    tmp_path: Path, api: FakeDeployApi
) -> None:
    w = world(tmp_path, api, schedule(extra="  startingDeadlineSeconds: 60\n"))
    engine = w.engine()
    try:
        t = w.first_fire()
        assert w.tick(engine, t + timedelta(seconds=61)) == []
        (ex,) = w.executions()
        assert ex.status == "missed" and "startingDeadlineSeconds (60)" in (ex.error or "")
        assert api.runs == [] and w.executions("dev")[0].status == "missed"
        (ok,) = w.tick(engine, t + timedelta(minutes=10, seconds=59))
        assert ok.status == "completed"
    finally:
        engine.close()


def _slow_first_call(api: FakeDeployApi) -> threading.Event:
    gate = threading.Event()
    api.run_gate = gate
    api.run_arrived.clear()
    return gate


def test_concurrency_forbid_skips_a_fire_while_one_runs(tmp_path: Path, api: FakeDeployApi) -> None:
    w = world(tmp_path, api, schedule("forbid"))
    engine = w.engine()
    gate = _slow_first_call(api)
    try:
        t = w.first_fire()
        w.tick(engine, t, wait=False)
        assert api.run_arrived.wait(30)
        assert w.tick(engine, t + timedelta(minutes=10)) == []
        by_time = {e.fire_time: e for e in w.executions()}
        assert by_time[t].status == "running"
        skipped = by_time[t + timedelta(minutes=10)]
        assert skipped.status == "skipped" and "concurrency forbid" in (skipped.error or "")
    finally:
        gate.set()
        engine.close()
    assert {e.fire_time: e.status for e in w.executions()}[t] == "completed"
    assert len(api.runs) == 1


def test_concurrency_replace_cancels_the_running_one(tmp_path: Path, api: FakeDeployApi) -> None:
    w = world(tmp_path, api, schedule("replace"))
    engine = w.engine()
    gate = _slow_first_call(api)
    try:
        t = w.first_fire()
        w.tick(engine, t, wait=False)
        assert api.run_arrived.wait(30)
        api.run_arrived.clear()
        w.tick(engine, t + timedelta(minutes=10), wait=False)
        assert api.run_arrived.wait(30)
        first = {e.fire_time: e for e in w.executions()}[t]
        assert first.status == "cancelled" and "replaced by the fire" in (first.error or "")
    finally:
        gate.set()
        engine.close()
    final = {e.fire_time: e for e in w.executions()}
    assert final[t].status == "cancelled"  # its late answer did not overwrite it
    assert final[t + timedelta(minutes=10)].status == "completed"


def test_a_suspended_deployment_s_fires_are_skipped(tmp_path: Path, api: FakeDeployApi) -> None:
    w = world(tmp_path, api, schedule())
    deployments = w.repo / "manifests" / "deployments.yaml"
    deployments.write_text(
        deployments.read_text().replace(
            "{provider: registry}", "{provider: registry, suspended: true}"
        )
    )
    commit_all(w.repo, "suspend")
    assert cli(w.repo, "apply").code == 0
    engine = w.engine()
    try:
        assert w.tick(engine, w.first_fire()) == []
        (ex,) = w.executions()
        assert ex.status == "skipped" and ex.error == "deployment.chat is suspended in 'prod'"
        assert api.runs == []
    finally:
        engine.close()


def test_a_deleted_deployment_is_recorded_not_crashed_on(
    tmp_path: Path, api: FakeDeployApi
) -> None:
    w = world(tmp_path, api, schedule())
    api.remove("deployments", "prod", "chat")  # gone behind reconciler's back
    engine = w.engine()
    try:
        (ex,) = w.tick(engine, w.first_fire())
        assert ex.status == "failed" and "404" in (ex.error or ""), ex.error
    finally:
        engine.close()


def test_exactly_once_with_two_processes_on_postgresql(
    tmp_path: Path, api: FakeDeployApi, postgres_url: str
) -> None:
    repo = make_repo(tmp_path / "repo", api.url, schedules=schedule())
    r = cli(repo, "--state", postgres_url, "apply")
    assert r.code == 0, r.err
    w = World(repo, api, postgres_url)
    fire = w.first_fire()
    worker = [sys.executable, str(ROOT / "fire_worker.py"), str(repo), postgres_url]
    procs = [
        subprocess.Popen([*worker, (fire + timedelta(seconds=s)).isoformat()],
                         stdout=subprocess.PIPE, text=True,
                         env={"REGISTRY_TOKEN": TOKEN, "PYTHONPATH": str(ROOT.parent)})
        for s in (0, 1)
    ]  # fmt: skip
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    fired = [ln for out in outs for ln in out.splitlines() if ln.startswith("fired ")]
    assert len(fired) == 2  # one execution per environment, whichever process got it
    assert len(api.runs) == 1
    assert sorted(e.environment for e in w.executions("prod") + w.executions("dev")) == [
        "dev", "prod",
    ]  # fmt: skip
