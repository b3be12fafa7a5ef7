"""Apply waits for health (issue 15) and the run deadline (issue 13), in-process: an
in-memory provider with scripted health sequences against a real SQLite state file.

The CLI side (a loopback deployment API whose objects become healthy, or never do)
is in test_cli_health.py."""

from __future__ import annotations

import ast
import io
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from executor_world import ENV, apply, desired_of, outcomes

import reconciler.executor
from reconciler.clock import FAKE_EPOCH, SYSTEM_CLOCK, FakeClock
from reconciler.executor import (
    RETRY_AFTER_CAP,
    HealthEvent,
    readiness_timeout,
)
from reconciler.httpclient import current_wait_deadline
from reconciler.instances import Instance
from reconciler.providers.base import HealthStatus, RetryAfter
from reconciler.providers.testing import MemoryProvider
from reconciler.redaction import Redactor
from reconciler.state.sqlite import SQLiteState


def deployment(name: str, model: str = "gpt-4o", ready: float | None = 5.0) -> Instance:
    spec: dict[str, Any] = {"model": model, "endpoint": f"/{name}"}
    if ready is not None:
        spec["readinessTimeoutSeconds"] = ready
    return Instance(ENV, "Deployment", name, "mem", spec)


def schedule(name: str, dep: Instance) -> Instance:
    spec = {"deployment": dep.name, "cron": "0 * * * *"}
    return Instance(ENV, "Schedule", name, "mem", spec, depends_on=(dep.key,))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteState]:
    s = SQLiteState(tmp_path / "state.db", env={})
    yield s
    s.close()


class SlowPolls(MemoryProvider):
    """Polls 50 ms apart: long enough for other writes to happen in between."""

    poll_interval: ClassVar[float] = 0.05


class Every10s(MemoryProvider):
    """Polls 10 s apart: on a FakeClock, each poll's time is known exactly."""

    poll_interval: ClassVar[float] = 10.0


def seen(events: list[HealthEvent]) -> list[tuple[str | None, float]]:
    return [(e.health.health if e.health else None, e.waited) for e in events]


# -- waiting ----------------------------------------------------------------------------


def test_a_change_is_applied_once_its_object_is_healthy(store: SQLiteState) -> None:
    mem = MemoryProvider()
    chat = deployment("chat")
    mem.set_health(chat.key, ["Progressing", "Progressing", "Healthy"])
    events: list[HealthEvent] = []
    result = apply(store, mem, desired_of(chat), health=events.append)
    assert result.outcome == "applied"
    (res,) = result.results
    assert res.health == HealthStatus("Healthy")
    assert mem.calls_of("status") == [chat.key] * 3
    assert [e.health.health for e in events if e.health] == ["Progressing", "Healthy"]
    assert chat.key in store.applied(ENV)


def test_without_a_readiness_timeout_nothing_is_polled(store: SQLiteState) -> None:
    mem = MemoryProvider()
    chat = deployment("chat", ready=None)
    mem.set_health(chat.key, ["Degraded"])  # would fail the change if asked
    assert apply(store, mem, desired_of(chat)).outcome == "applied"
    assert mem.calls_of("status") == []


def test_the_deployments_own_timeout_wins_over_the_providers() -> None:
    class Patient(MemoryProvider):
        readiness_timeout: ClassVar[float] = 600.0

    assert readiness_timeout(Patient(), deployment("a", ready=None)) == 600.0
    assert readiness_timeout(Patient(), deployment("a", ready=2)) == 2.0
    assert readiness_timeout(MemoryProvider(), deployment("a", ready=None)) == 0.0


def test_suspended_counts_as_done(store: SQLiteState) -> None:
    mem = MemoryProvider()
    chat = deployment("chat")
    mem.set_health(chat.key, ["Progressing", "Suspended"])
    assert apply(store, mem, desired_of(chat)).outcome == "applied"


@pytest.mark.parametrize(
    ("health", "error"),
    [
        (HealthStatus("Degraded", "image pull failed"), "Degraded: image pull failed"),
        (HealthStatus("Missing"), "Missing"),
    ],
)
def test_degraded_or_missing_after_the_write_fails_the_change(
    store: SQLiteState, health: HealthStatus, error: str
) -> None:
    mem = MemoryProvider()
    chat = deployment("chat")
    nightly = schedule("nightly", chat)
    mem.set_health(chat.key, ["Progressing", health])
    result = apply(store, mem, desired_of(chat, nightly))
    assert result.outcome == "failed"
    assert result.message == f"deployment.chat: {error}"
    assert outcomes(result) == {"deployment.chat": "failed", "schedule.nightly": "skipped"}
    (run,) = store.runs(ENV)
    assert run.outcome == "failed"
    by_name = {c.key.name: c for c in run.changes}
    assert by_name["chat"].outcome == "failed" and by_name["chat"].error == error
    assert by_name["chat"].provider_id == mem.objects[chat.key].provider_id
    assert store.applied(ENV) == {}  # not applied: a re-run tries again
    assert store.lock_holder(ENV) is None


def test_a_deployment_that_never_becomes_healthy_times_out_and_rollback_restores_it(
    store: SQLiteState,
) -> None:
    mem = MemoryProvider()
    old = deployment("chat", "gpt-4o", ready=0.3)
    assert apply(store, mem, desired_of(old)).outcome == "applied"
    new = deployment("chat", "gpt-4o-mini", ready=0.3)
    # the new spec never comes up; once the old one is back, it is Healthy again
    mem.set_health(new.key, ["Progressing"])
    restored_health: list[HealthEvent] = []

    def watch(ev: HealthEvent) -> None:
        restored_health.append(ev)
        if ev.health is None:  # the change gave up: the restore's object comes up
            mem.set_health(new.key, ["Progressing", "Healthy"])

    result = apply(store, mem, desired_of(new), rollback_on_failure=True, health=watch)
    assert result.outcome == "failed"
    assert result.message == (
        "deployment.chat: not Healthy within its readiness timeout of 0.3 s: Progressing"
    )
    (res,) = result.results
    assert res.outcome == "failed" and res.written
    assert [r.outcome for r in result.restored] == ["applied"]
    assert mem.objects[old.key].body["model"] == "gpt-4o"  # the old spec is back
    assert store.applied(ENV)[old.key].spec["model"] == "gpt-4o"
    run = store.runs(ENV)[0]
    assert run.outcome == "failed"
    assert [(c.outcome, c.error) for c in run.changes] == [
        ("failed", "not Healthy within its readiness timeout of 0.3 s: Progressing"),
        ("applied", "rollback-on-failure"),
    ]
    assert run.details["rolled_back"] == ["deployment.chat"]
    # the restore waited for the restored object to be Healthy
    assert [e.health.health for e in restored_health if e.health][-1] == "Healthy"


def test_a_restore_that_does_not_come_up_is_reported(store: SQLiteState) -> None:
    mem = MemoryProvider()
    old = deployment("chat", "gpt-4o", ready=0.2)
    assert apply(store, mem, desired_of(old)).outcome == "applied"
    new = deployment("chat", "gpt-4o-mini", ready=0.2)
    mem.set_health(new.key, [HealthStatus("Degraded", "out of quota")])
    result = apply(store, mem, desired_of(new), rollback_on_failure=True)
    assert [r.outcome for r in result.restored] == ["failed"]
    assert result.restored[0].error == "restored, then Degraded: out of quota"
    (run,) = store.runs(ENV)[:1]
    assert run.details["restore_failed"] == {"deployment.chat": result.restored[0].error}
    # the old spec was written back, so the state says so (a re-run tries the new again)
    assert mem.objects[old.key].body["model"] == "gpt-4o"
    recorded = store.applied(ENV)[old.key]
    assert recorded.spec["model"] == "gpt-4o" and recorded.spec_hash == old.hash()
    assert recorded.provider_id == mem.objects[old.key].provider_id


def test_an_applied_change_whose_restore_does_not_come_up_is_recorded_as_restored(
    store: SQLiteState,
) -> None:
    """`a` applies (recorded with its new spec); `b` fails, so `a` is put back, and the
    put-back object never becomes Healthy. The state must name the spec the provider
    now holds (the old one), not the new one it had recorded: else the next plan sees
    no change and never re-applies."""
    mem = MemoryProvider()
    a_old, b_old = deployment("a", "gpt-4o", ready=0.2), deployment("b", "gpt-4o", ready=0.2)
    assert apply(store, mem, desired_of(a_old, b_old)).outcome == "applied"
    a_new, b_new = deployment("a", "gpt-4o-mini", ready=0.2), deployment("b", "x", ready=0.2)
    mem.fail(b_new.key, "update", "refused")

    def restore_comes_up_degraded(res: Any) -> None:
        if res.change.key == a_new.key and res.outcome == "applied":  # what comes next
            mem.set_health(a_new.key, [HealthStatus("Degraded", "out of quota")])

    result = apply(
        store,
        mem,
        desired_of(a_new, b_new),
        rollback_on_failure=True,
        parallelism=1,
        progress=restore_comes_up_degraded,
    )
    assert outcomes(result) == {"deployment.a": "applied", "deployment.b": "failed"}
    assert [(r.change.name, r.outcome) for r in result.restored] == [("a", "failed")]
    assert mem.objects[a_old.key].body["model"] == "gpt-4o"  # the old spec is back...
    recorded = store.applied(ENV)[a_old.key]
    assert recorded.spec_hash == a_old.hash()  # ...and the state says so
    assert recorded.provider_id == mem.objects[a_old.key].provider_id
    assert store.lock_holder(ENV) is None


def test_waiting_holds_no_worker_or_slot_a_write_could_use(store: SQLiteState) -> None:
    """Parallelism 1, eight deployments that each take three polls: every write
    happens before any change's last poll (waits overlap; polls take the one slot).
    On the system clock: the point is real threads competing for the one slot while
    polls are 50 ms apart, which a clock that jumps to the next poll would not give."""
    mem = SlowPolls()
    deps = [deployment(f"d{i}") for i in range(8)]
    for d in deps:
        mem.set_health(d.key, ["Progressing", "Progressing", "Healthy"])
    result = apply(store, mem, desired_of(*deps), parallelism=1, clock=SYSTEM_CLOCK)
    assert result.outcome == "applied"
    assert mem.peak_concurrency == 1
    calls = [(c.action, c.key) for c in mem.calls]
    last_create = max(i for i, (action, _) in enumerate(calls) if action == "create")
    third_polls = [
        i
        for i, (action, key) in enumerate(calls)
        if action == "status" and calls[: i + 1].count(("status", key)) == 3
    ]
    assert len(third_polls) == 8 and last_create < min(third_polls)


def test_retry_after_from_status_is_honoured(store: SQLiteState) -> None:
    mem = MemoryProvider()
    chat = deployment("chat")
    mem.set_health(chat.key, ["Healthy"])
    mem.fail(chat.key, "status", RetryAfter(0.01), times=2)
    assert apply(store, mem, desired_of(chat)).outcome == "applied"
    assert mem.calls_of("status") == [chat.key] * 3


def test_a_retry_after_past_the_readiness_timeout_fails_at_once(store: SQLiteState) -> None:
    mem = MemoryProvider()
    chat = deployment("chat", ready=30)
    mem.set_health(chat.key, ["Progressing"])
    mem.fail(chat.key, "status", RetryAfter(120), times=None)
    result = apply(store, mem, desired_of(chat))
    assert result.outcome == "failed"
    assert "the provider asked to wait 120 s more" in (result.message or "")
    assert mem.calls_of("status") == [chat.key]


def test_a_status_error_fails_the_change_naming_it(store: SQLiteState) -> None:
    mem = MemoryProvider()
    chat = deployment("chat")
    mem.fail(chat.key, "status", "503 after 5 attempts", times=None)
    result = apply(store, mem, desired_of(chat))
    assert result.message == "deployment.chat: cannot read its health: provider 'memory': " + (
        "503 after 5 attempts"
    )


def test_ctrl_c_while_waiting_ends_the_run_interrupted(store: SQLiteState) -> None:
    mem = MemoryProvider()
    chat = deployment("chat", ready=60)
    mem.set_health(chat.key, ["Progressing"])

    def interrupt(ev: HealthEvent) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        apply(store, mem, desired_of(chat), health=interrupt)
    (run,) = store.runs(ENV)
    assert run.outcome == "interrupted"
    assert store.lock_holder(ENV) is None


def test_ctrl_c_from_the_main_thread_stops_the_waits(store: SQLiteState) -> None:
    """The signal arrives in the main thread while workers sleep until a poll is due
    (on the system clock: a real signal interrupting a real wait is the point)."""

    class Hourly(MemoryProvider):
        poll_interval: ClassVar[float] = 3600.0

    mem = Hourly()
    chat = deployment("chat", ready=7200)
    mem.set_health(chat.key, ["Progressing"])
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        apply(store, mem, desired_of(chat), clock=SYSTEM_CLOCK)
    timer.cancel()
    (run,) = store.runs(ENV)
    assert run.outcome == "interrupted"
    assert store.lock_holder(ENV) is None
    # it was written, so the run's record says what became of it (the state keeps none)
    (change,) = run.changes
    assert (change.outcome, change.error) == (
        "failed",
        "not Healthy yet when the run stopped (KeyboardInterrupt)",
    )
    assert change.provider_id == mem.objects[chat.key].provider_id
    assert store.applied(ENV) == {}


# -- the run deadline ---------------------------------------------------------------------


def test_the_run_deadline_fails_a_waiting_change_and_skips_what_had_not_started(
    store: SQLiteState,
) -> None:
    """On a FakeClock: polls at 10 s and 20 s, the deadline at 25 s fails chat without
    another poll, and nightly (ready only then) does not start."""
    clock = FakeClock()
    mem = Every10s()
    chat = deployment("chat", ready=3600)
    mem.set_health(chat.key, ["Progressing"])
    desired = desired_of(chat, schedule("nightly", chat))
    result = apply(store, mem, desired, run_timeout=25, clock=clock)
    assert result.outcome == "failed"
    assert result.message == (
        "the run deadline of 25 s (--run-timeout / RECONCILER_RUN_TIMEOUT) passed; "
        "deployment.chat: still Progressing when the run deadline of 25 s "
        "(--run-timeout / RECONCILER_RUN_TIMEOUT) passed"
    )
    assert outcomes(result) == {"deployment.chat": "failed", "schedule.nightly": "skipped"}
    assert mem.calls_of("status") == [chat.key] * 2 and clock.monotonic() == 25
    (run,) = store.runs(ENV)
    assert run.outcome == "failed" and "run deadline of 25 s" in run.details["deadline"]
    nightly = next(c for c in run.changes if c.key.name == "nightly")
    assert nightly.error == (
        "not started: the run deadline of 25 s (--run-timeout / RECONCILER_RUN_TIMEOUT) passed"
    )
    assert store.lock_holder(ENV) is None


def test_after_the_run_deadline_no_change_starts(store: SQLiteState) -> None:
    mem = MemoryProvider()
    deps = [deployment(f"d{i}", ready=None) for i in range(5)]
    result = apply(store, mem, desired_of(*deps), run_timeout=0.0)
    assert result.outcome == "failed"
    assert set(outcomes(result).values()) == {"skipped"}
    assert all("not started: the run deadline of 0 s" in (r.error or "") for r in result.results)
    assert mem.calls_of("create") == []
    assert store.applied(ENV) == {}
    assert store.lock_holder(ENV) is None


class DeadlineSeeing(MemoryProvider):
    """Records the outer deadline its HTTP retry waits would be bounded by."""

    seen: ClassVar[list[tuple[str, float] | None]] = []

    def create(self, inst: Instance) -> str:
        outer = current_wait_deadline()
        self.seen.append(None if outer is None else (outer.name, outer.left()))
        return super().create(inst)


def test_provider_calls_wait_no_longer_than_the_run_deadline(store: SQLiteState) -> None:
    """A Retry-After past the run deadline fails the call at once (reconciler.httpclient)
    instead of sleeping through the deadline: the workers carry it to the client."""
    DeadlineSeeing.seen = []
    mem = DeadlineSeeing()
    apply(store, mem, desired_of(deployment("chat", ready=None)), run_timeout=600)
    apply(store, mem, desired_of(deployment("chat", ready=None), deployment("rag", ready=None)))
    (bounded, unbounded) = DeadlineSeeing.seen
    assert bounded is not None and unbounded is None
    name, left = bounded
    assert name == "the run deadline of 600 s (--run-timeout / RECONCILER_RUN_TIMEOUT)"
    assert left == 600  # on the run's clock, which did not move before the create


# -- the clock ---------------------------------------------------------------------------


def test_polls_timestamps_and_the_run_id_come_from_the_runs_clock(store: SQLiteState) -> None:
    clock = FakeClock()
    mem = Every10s()
    chat = deployment("chat", ready=3600)
    mem.set_health(chat.key, ["Progressing", "Progressing", "Healthy"])
    events: list[HealthEvent] = []
    result = apply(store, mem, desired_of(chat), health=events.append, clock=clock)
    assert result.outcome == "applied"
    assert seen(events) == [("Progressing", 10.0), ("Healthy", 30.0)]
    assert clock.monotonic() == 30.0
    assert (result.run_id or "").startswith("20250101T000000Z-")
    (run,) = store.runs(ENV)
    assert run.started_at == FAKE_EPOCH
    assert store.applied(ENV)[chat.key].applied_at == FAKE_EPOCH + timedelta(seconds=30)


def test_a_retry_after_longer_than_the_cap_waits_the_cap(store: SQLiteState) -> None:
    clock = FakeClock()
    mem = Every10s()
    chat = deployment("chat", ready=3600)
    mem.set_health(chat.key, ["Healthy"])
    mem.fail(chat.key, "status", RetryAfter(1000))
    events: list[HealthEvent] = []
    assert apply(store, mem, desired_of(chat), health=events.append, clock=clock).outcome == (
        "applied"
    )
    assert seen(events) == [("Healthy", 10 + RETRY_AFTER_CAP)]


def test_the_readiness_timeout_gets_a_last_poll_at_its_end(store: SQLiteState) -> None:
    clock = FakeClock()
    mem = Every10s()
    chat = deployment("chat", ready=35)
    mem.set_health(chat.key, ["Progressing"])
    result = apply(store, mem, desired_of(chat), clock=clock)
    assert result.message == (
        "deployment.chat: not Healthy within its readiness timeout of 35 s: Progressing"
    )
    assert mem.calls_of("status") == [chat.key] * 4  # at 10, 20, 30 and 35 s
    assert clock.monotonic() == 35


def test_a_restore_waits_for_its_object_on_the_runs_clock(store: SQLiteState) -> None:
    """The restored object is asked at once, then every poll interval, like any change
    (the restore's wait is the same code), and it is recorded before it is Healthy."""
    clock = FakeClock()
    mem = Every10s()
    old = deployment("chat", "gpt-4o", ready=60)
    assert apply(store, mem, desired_of(old), clock=clock).outcome == "applied"
    new = deployment("chat", "gpt-4o-mini", ready=60)
    mem.set_health(new.key, [HealthStatus("Degraded", "bad model")])
    events: list[HealthEvent] = []

    def watch(ev: HealthEvent) -> None:
        events.append(ev)
        if ev.health is None:  # the change gave up: what follows is the restore's wait
            mem.set_health(new.key, ["Progressing", "Progressing", "Healthy"])
            events.clear()

    start = clock.monotonic()
    result = apply(store, mem, desired_of(new), rollback_on_failure=True, health=watch, clock=clock)
    assert [r.outcome for r in result.restored] == ["applied"]
    assert seen(events) == [("Progressing", 0.0), ("Healthy", 20.0)]
    assert {e.change.action for e in events} == {"update"}
    assert clock.monotonic() - start == 30  # the failed change's poll at 10, then 20
    assert store.applied(ENV)[old.key].applied_at == FAKE_EPOCH + timedelta(seconds=start + 10)


def test_a_fake_clock_moves_only_when_advanced_or_slept_on() -> None:
    clock = FakeClock()
    assert clock.monotonic() == 0 and clock.now() == FAKE_EPOCH
    clock.sleep(1.5)
    clock.advance(2)
    assert clock.monotonic() == 3.5 and clock.now() == FAKE_EPOCH + timedelta(seconds=3.5)
    cond = threading.Condition()
    with cond:
        assert clock.wait(cond, 60) is False  # `auto`: a timed wait is a sleep
    assert clock.monotonic() == 63.5 and clock.slept == [1.5, 60]


def test_a_manual_fake_clock_wakes_a_timed_wait_when_advanced_past_its_end() -> None:
    clock = FakeClock(auto=False)
    cond = threading.Condition()
    answers: list[bool] = []
    entered = threading.Event()

    def waiter() -> None:
        with cond:
            entered.set()
            end = clock.monotonic() + 10
            while clock.wait(cond, end - clock.monotonic()):
                answers.append(True)  # woken before its end: it waits again
            answers.append(False)

    t = threading.Thread(target=waiter)
    t.start()
    entered.wait()
    for step in (4, 6):
        with cond:  # held by the waiter until it is inside its wait
            pass
        clock.advance(step)
    t.join(30)
    assert not t.is_alive() and answers[-1] is False and clock.monotonic() == 10


def test_the_executor_reads_time_only_through_its_clock() -> None:
    """No `time` module, no `datetime.now` in the executor: every wait, deadline and
    timestamp goes through the injected clock, so tests can run it on a fake."""
    found = []
    for path in sorted(Path(reconciler.executor.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(a.name == "time" for a in node.names):
                found.append(f"{path.name}: import time")
            if isinstance(node, ast.ImportFrom) and node.module == "time":
                found.append(f"{path.name}: from time import")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("now", "utcnow", "today")
                and isinstance(node.value, ast.Name)
                and node.value.id in ("datetime", "date")
            ):
                found.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert found == []


# -- the live view ------------------------------------------------------------------------


class Terminal(io.StringIO):
    """What the view writes to, claiming to be a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_terminal_shows_a_live_line_per_waiting_instance_until_it_is_healthy() -> None:
    from reconciler.plan import Change
    from reconciler.views.apply import progress

    chat, embed = deployment("chat"), deployment("embed")
    ch = {i.name: Change("create", i.key, "mem", None, i.body()) for i in (chat, embed)}
    screen = Terminal()
    with progress(screen, Redactor()) as watch:
        assert watch.health is not None
        watch.health(HealthEvent(ch["chat"], HealthStatus("Progressing", "Endpoint is pending"), 1))
        watch.health(HealthEvent(ch["embed"], HealthStatus("Progressing"), 1))
        lines = (
            "dev: deployment.chat waiting: Progressing (Endpoint is pending)",
            "dev: deployment.embed waiting: Progressing",
        )
        _redrawn(screen, lambda shown: all(line in shown for line in lines))
        watch.health(HealthEvent(ch["chat"], HealthStatus("Healthy"), 2))
        watch.health(HealthEvent(ch["embed"], None, 2))
        # The first frame written after this point may have been drawn before the events;
        # every frame after it (and the last, drawn when the view closes) is drawn after.
        mark = len(screen.getvalue())
        _redrawn(screen, lambda shown: len(shown) > mark)
        mark = len(screen.getvalue())
    assert "waiting" not in screen.getvalue()[mark:], "settled instances leave the view"


def _redrawn(screen: Terminal, seen: Callable[[str], bool]) -> None:
    """Waits for the view's refresh thread (ten frames a second) to have drawn `seen`."""
    deadline = time.monotonic() + 30
    while not seen(screen.getvalue()):
        assert time.monotonic() < deadline, f"not drawn within 30 s:\n{screen.getvalue()}"
        time.sleep(0.02)


def test_elsewhere_the_log_lines_are_the_view() -> None:
    from reconciler.views.apply import progress

    with progress(io.StringIO(), Redactor()) as watch:
        assert watch.progress is None and watch.health is None
