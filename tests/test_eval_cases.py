"""An eval's calls (reconciler/checks/eval.py) on data: at most `parallelism` at once,
listed in the order they started, and a budget of calls, cost or seconds that starts no
further call; the calls under way end and count."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from reconciler.checks.eval import Budget, Case, read_cases, run_cases
from reconciler.errors import ConfigError
from reconciler.manifests.models import CheckExpect
from reconciler.runs.model import Execution

AT = datetime(2026, 12, 7, tzinfo=UTC)
CASES = [Case({"n": n}, CheckExpect()) for n in range(5)]


class Deployment:
    """Answers each call with an execution; `passes` says which inputs pass. Calls can
    be held until enough are under way, so the test sees how many run at once."""

    def __init__(self, *, cost: float | None = 0.5, hold_until: int | None = None) -> None:
        self.cost = cost
        self.mu = threading.Lock()
        self.at_once = 0
        self.most_at_once = 0
        self.seen: list[int] = []
        #: Calls wait until this many are under way at once (then all go on).
        self.hold_until = hold_until
        self.gate = threading.Event()
        if hold_until is None:
            self.gate.set()

    def __call__(self, case: Case) -> Execution:
        with self.mu:
            self.at_once += 1
            self.most_at_once = max(self.most_at_once, self.at_once)
            n = len(self.seen)
            self.seen.append(case.input["n"])
            if self.at_once == self.hold_until:
                self.gate.set()
        self.gate.wait(30)
        with self.mu:
            self.at_once -= 1
        ex = Execution(f"ex-{n:03d}", "dev", "chat", "eval", "completed", AT)
        ex.passed, ex.cost = case.input["n"] % 2 == 0, self.cost
        return ex


def test_every_case_repeat_times_in_order_and_listed_as_started() -> None:
    dep = Deployment()
    tally = run_cases(CASES, 2, dep, parallelism=1, budget=Budget())
    assert dep.seen == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert (tally.calls, tally.passed, tally.stopped) == (10, 6, None)
    assert tally.cost == pytest.approx(5.0)
    assert tally.executions == [f"ex-{n:03d}" for n in range(10)]


def test_no_more_than_parallelism_calls_at_once() -> None:
    dep = Deployment(hold_until=3)  # the first calls wait until three are under way
    tally = run_cases(CASES, 4, dep, parallelism=3, budget=Budget())
    assert dep.most_at_once == 3 and tally.calls == 20


def test_a_call_budget_starts_no_call_past_it() -> None:
    tally = run_cases(CASES, 3, Deployment(), parallelism=4, budget=Budget(calls=7))
    assert (tally.calls, tally.stopped) == (7, "budget: maxCalls 7 reached")


def test_a_cost_budget_counts_what_the_calls_ended_cost() -> None:
    tally = run_cases(CASES, 3, Deployment(cost=0.5), parallelism=1, budget=Budget(cost=2.0))
    assert (tally.calls, tally.stopped) == (4, "budget: maxCost 2 reached (spent 2)")


def test_an_unknown_cost_stops_a_cost_budget() -> None:
    tally = run_cases(CASES, 1, Deployment(cost=None), parallelism=1, budget=Budget(cost=1.0))
    assert (tally.calls, tally.cost) == (1, None)
    assert tally.stopped == "budget: maxCost 1 reached (spent unknown)"


def test_a_time_budget_reads_the_clock_it_is_given() -> None:
    ticks = iter([0.0, 1.0, 2.0, 9.5, 10.0, 11.0])
    tally = run_cases(
        CASES, 1, Deployment(), parallelism=1, budget=Budget(seconds=10),
        monotonic=lambda: next(ticks),
    )  # fmt: skip
    assert (tally.calls, tally.stopped) == (3, "budget: maxSeconds 10 reached")


def test_a_bad_expectation_in_a_case_is_located() -> None:
    text = '{"input": {}}\n{"input": {}, "expect": {"number": {"tolerance": 1}}}\n'
    with pytest.raises(ConfigError, match=r"^golden.jsonl:2: expect.number: .*needs `equals`"):
        read_cases(text, "golden.jsonl")


def test_a_failed_call_without_usage_costs_nothing_to_a_cost_budget() -> None:
    class Failing(Deployment):
        def __call__(self, case: Case) -> Execution:
            ex = super().__call__(case)
            ex.status, ex.cost = "failed", None  # refused before any usage was reported
            return ex

    tally = run_cases(CASES, 1, Failing(), parallelism=1, budget=Budget(cost=1.0))
    assert (tally.calls, tally.stopped, tally.cost) == (5, None, 0.0)


def test_what_else_the_run_spent_counts_toward_its_cost_budget() -> None:
    spent = [0.0]

    def graded(case: Case) -> Execution:
        spent[0] += 1.0  # a judge's call beside each answered one
        return Deployment(cost=0.5)(case)

    tally = run_cases(
        CASES, 1, graded, parallelism=1, budget=Budget(cost=3.0), also_spent=lambda: spent[0]
    )
    assert (tally.calls, tally.stopped) == (2, "budget: maxCost 3 reached (spent 3)")


def test_a_bad_regex_in_a_case_is_located_before_any_call() -> None:
    with pytest.raises(ConfigError, match=r"^golden.jsonl:1: expect.regex is not a valid"):
        read_cases('{"input": {}, "expect": {"regex": "("}}\n', "golden.jsonl")
