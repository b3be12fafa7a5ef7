"""Re-checks in process, on a fake clock: when a check is due (`applied_at + k ×
interval`), that each due time runs once (a second engine on the same executions is
refused by its key), what is skipped, and what the agent tells of an outcome."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from reconciler.agent.recheck import notice_for
from reconciler.checks.recheck import RecheckEngine, due_at, next_due
from reconciler.clock import FakeClock
from reconciler.config import load_settings
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.instances import InstanceKey, ProviderConfig
from reconciler.manifests.models import Check
from reconciler.providers.base import Invocation, InvokeTarget, Usage
from reconciler.runs.model import Query
from reconciler.runs.store import ExecutionStore, open_executions
from reconciler.state.base import AppliedRecord

MIN = timedelta(minutes=1)


def test_due_times_are_counted_from_when_the_deployment_was_applied() -> None:
    clock = FakeClock()
    applied, every = clock.now(), 15 * MIN
    assert due_at(applied, every, clock.now()) is None  # the check after apply ran now
    assert next_due(applied, every, clock.now()) == applied + every
    clock.advance(14 * 60 + 59)
    assert due_at(applied, every, clock.now()) is None
    clock.advance(1)
    assert due_at(applied, every, clock.now()) == applied + every
    assert next_due(applied, every, clock.now()) == applied + 2 * every
    clock.advance(50 * 60)  # 65 minutes in: three were due, the latest runs
    assert due_at(applied, every, clock.now()) == applied + 4 * every
    assert next_due(applied, every, clock.now()) == applied + 5 * every


def check(interval: str | None = "15m", envs: tuple[str, ...] = ("staging",)) -> Check:
    spec: dict[str, Any] = {
        "deployment": "chat",
        "environments": list(envs),
        "requests": [
            {"input": {"q": "refund?"}, "expect": {"contains": ["refund"]}},
            {"input": {"q": "hi"}, "expect": {"latencyMsMax": 60000}},
        ],
    }
    if interval is not None:
        spec["interval"] = interval
    return Check.model_validate(
        {
            "apiVersion": "reconciler/v1",
            "kind": "Check",
            "metadata": {"name": "smoke"},
            "spec": spec,
        }
    )


class Answers:
    """A provider that answers what the test says."""

    def __init__(self) -> None:
        self.output = "about your refund"
        self.calls: list[Mapping[str, Any]] = []

    def invoke(self, target: InvokeTarget, data: Mapping[str, Any], deadline: float) -> Invocation:
        self.calls.append(data)
        return Invocation(self.output, Usage(3, 4), 0.01)

    def close(self) -> None:
        pass


class State:
    """What the engine reads of the state: environments, the last applied run's commit,
    the applied records."""

    def __init__(self, applied_at: datetime, commit: str | None = "c1") -> None:
        self.commit = commit
        self.records: dict[str, dict[InstanceKey, AppliedRecord]] = {}
        self.apply("staging", applied_at)

    def apply(self, env: str, at: datetime, **spec: Any) -> None:
        rec = AppliedRecord(
            env,
            "Deployment",
            "chat",
            "api",
            "id-1",
            {"model": "m", **spec},
            "h",
            {},
            "c1",
            "r1",
            at,
        )
        self.records[env] = {rec.key: rec}

    def environments(self) -> list[str]:
        return list(self.records)

    def last_applied_run(self, env: str) -> Any:
        return SimpleNamespace(commit=self.commit)

    def applied(self, env: str) -> dict[InstanceKey, AppliedRecord]:
        return self.records.get(env, {})


class World:
    def __init__(self, tmp: Path, checks: list[Check]) -> None:
        self.clock = FakeClock()
        self.state = State(self.clock.now())
        self.answers = Answers()
        self.settings = load_settings(tmp, env={})
        self.url = f"sqlite:///{tmp / 'state.db'}"
        providers = {"staging": {"api": ProviderConfig("api", "http", "staging")}}
        self.desired = SimpleNamespace(
            manifests=SimpleNamespace(
                checks={c.metadata.name: SimpleNamespace(model=c) for c in checks}
            ),
            providers=providers,
        )
        self.loads: list[str] = []
        self.stores: list[ExecutionStore] = []

    def load(self, commit: str) -> Any:
        self.loads.append(commit)
        return self.desired

    def engine(self) -> RecheckEngine:
        store = open_executions(self.url, repo_root=self.settings.repo, env={})
        self.stores.append(store)
        return RecheckEngine(
            self.settings,
            store,
            self.load,
            clock=self.clock.now,
            make=lambda config: self.answers,  # type: ignore[arg-type,return-value]
        )

    def recorded(self) -> list[Any]:
        return [e for e in self.stores[0].find(Query(limit=None)) if e.trigger == "check"]

    def close(self) -> None:
        for s in self.stores:
            s.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, [check()])
    yield w
    w.close()


def test_a_check_runs_at_its_interval_once_per_due_time(world: World) -> None:
    engine = world.engine()
    applied = world.clock.now()
    assert engine.tick(world.state, world.clock.now()) == []  # type: ignore[arg-type]
    assert engine.next_due() == applied + 15 * MIN
    world.clock.advance(15 * 60)
    (done,) = engine.tick(world.state, world.clock.now())  # type: ignore[arg-type]
    assert done.passed and done.due == applied + 15 * MIN and done.previous_passed is None
    assert [c["q"] for c in world.answers.calls] == ["refund?", "hi"]
    recorded = world.recorded()
    (claim,) = [e for e in recorded if e.fire_time is not None]  # the due time's key
    assert claim.fire_time == done.due and claim.check == "smoke" and claim.passed
    assert len(recorded) == 2 and all(e.passed for e in recorded)
    # looked at again before the next due time: nothing runs
    world.clock.advance(60)
    assert engine.tick(world.state, world.clock.now()) == []  # type: ignore[arg-type]
    assert len(world.answers.calls) == 2
    assert world.loads == ["c1"], "the commit of record is loaded once"


def test_a_second_engine_on_the_same_executions_does_not_run_it_again(world: World) -> None:
    first, second = world.engine(), world.engine()
    world.clock.advance(15 * 60)
    assert len(first.tick(world.state, world.clock.now())) == 1  # type: ignore[arg-type]
    assert second.tick(world.state, world.clock.now()) == []  # type: ignore[arg-type]
    assert len(world.answers.calls) == 2
    # the next due time is the second engine's if it looks first
    world.clock.advance(15 * 60)
    (done,) = second.tick(world.state, world.clock.now())  # type: ignore[arg-type]
    assert done.previous_passed is True, "read from the executions the other one recorded"
    assert first.tick(world.state, world.clock.now()) == []  # type: ignore[arg-type]


def test_a_failure_says_what_was_measured_and_a_pass_after_it_recovers(world: World) -> None:
    engine = world.engine()
    world.clock.advance(15 * 60)
    engine.tick(world.state, world.clock.now())  # type: ignore[arg-type]
    world.answers.output = "we are closed"
    world.clock.advance(15 * 60)
    (failed,) = engine.tick(world.state, world.clock.now())  # type: ignore[arg-type]
    assert not failed.passed and failed.previous_passed is True
    (line,) = failed.failures
    assert line.startswith("request 1 (ex-") and "measured 'we are closed'" in line
    notice = notice_for(failed)
    assert notice is not None and notice.event == "check_failed"
    assert "measured 'we are closed'" in notice.body
    world.clock.advance(15 * 60)
    (again,) = engine.tick(world.state, world.clock.now())  # type: ignore[arg-type]
    assert again.previous_passed is False and notice_for(again) is None, "told once"
    world.answers.output = "your refund"
    world.clock.advance(15 * 60)
    (ok,) = engine.tick(world.state, world.clock.now())  # type: ignore[arg-type]
    recovered = notice_for(ok)
    assert recovered is not None and recovered.event == "check_recovered"
    assert notice_for(engine.tick(world.state, world.clock.now() + 15 * MIN)[0]) is None  # type: ignore[arg-type]


def test_a_new_apply_moves_the_due_times(world: World) -> None:
    engine = world.engine()
    world.clock.advance(10 * 60)
    world.state.apply("staging", world.clock.now())  # applied again 10 minutes in
    world.clock.advance(10 * 60)  # 20 minutes after the first apply, 10 after the second
    assert engine.tick(world.state, world.clock.now()) == []  # type: ignore[arg-type]
    world.clock.advance(5 * 60)
    (done,) = engine.tick(world.state, world.clock.now())  # type: ignore[arg-type]
    assert done.due == world.clock.now()


@pytest.mark.parametrize(
    "what",
    ["no interval", "another environment", "suspended", "no commit of record", "unreadable commit"],
)
def test_what_is_not_rechecked(tmp_path: Path, what: str) -> None:
    c = (
        check(None)
        if what == "no interval"
        else check(envs=("production",))
        if what == "another environment"
        else check()
    )
    w = World(tmp_path, [c])
    try:
        if what == "suspended":
            w.state.apply("staging", w.clock.now(), suspended=True)
        if what == "no commit of record":
            w.state.commit = None
        engine = w.engine()
        if what == "unreadable commit":

            def broken(commit: str) -> Any:
                raise ReconcilerError(f"commit {commit} does not load")

            engine.load_commit = broken
        w.clock.advance(60 * 60)
        assert engine.tick(w.state, w.clock.now()) == []  # type: ignore[arg-type]
        assert engine.next_due() is None and w.answers.calls == []
    finally:
        w.close()


def test_a_provider_that_cannot_be_made_claims_nothing(world: World) -> None:
    """Made before the claim: no due time is left `pending` for good with nobody to run
    it (the error is logged once for it), and the next due time runs."""
    engine = world.engine()

    def missing_token(config: Any) -> Any:
        raise ConfigError("the token variable REGISTRY_TOKEN is not set")

    engine.make = missing_token
    world.clock.advance(15 * 60)
    assert engine.tick(world.state, world.clock.now()) == []  # type: ignore[arg-type]
    assert world.recorded() == []
    engine.make = lambda config: world.answers  # type: ignore[assignment,return-value]
    world.clock.advance(15 * 60)
    (done,) = engine.tick(world.state, world.clock.now())  # type: ignore[arg-type]
    assert done.passed
