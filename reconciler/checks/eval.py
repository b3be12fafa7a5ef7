"""An eval's cases through the run path: the dataset's cases read, then sent `repeat`
times, at most `parallelism` calls at once, within a budget (calls, cost, seconds)
checked before each call starts. What calls the deployment and records each execution
is handed in, so this is tested on data."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from reconciler.errors import ConfigError
from reconciler.manifests.models import CheckExpect
from reconciler.runs.model import Execution


@dataclass(frozen=True)
class Case:
    input: dict[str, Any]
    expect: CheckExpect


def read_cases(text: str, path: str) -> list[Case]:
    """Each non-blank line of the JSONL dataset; a bad line is `path:line: message`."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"{path}:{n}: not JSON: {e}") from None
        if not isinstance(case, dict) or not isinstance(case.get("input", {}), dict):
            raise ConfigError(f"{path}:{n}: a case is an object with an `input` object")
        try:
            expect = CheckExpect.model_validate(case.get("expect", {}))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(
                f"{path}:{n}: expect{'.' + where if where else ''}: {first['msg']}"
            ) from None
        if expect.regex is not None:
            try:
                re.compile(expect.regex)
            except re.error as e:
                raise ConfigError(
                    f"{path}:{n}: expect.regex is not a valid regular expression: {e}"
                ) from None
        out.append(Case(case.get("input", {}), expect))
    return out


def needs_judge(cases: Sequence[Case], path: str) -> None:
    """A case that asks a judge needs the Eval to declare one."""
    for case in cases:
        if case.expect.judge is not None:
            raise ConfigError(
                f"{path}: a case asks a judge ({case.expect.judge!r}), and the Eval "
                "declares no `judge` deployment: add spec.judge, or drop expect.judge"
            )


@dataclass(frozen=True)
class Budget:
    calls: int | None = None
    cost: float | None = None
    seconds: float | None = None


@dataclass
class Tally:
    """What the calls came to: judged calls, passes, the cost of those ended (None while
    any ended with its cost unknown), and why the run stopped early, if it did."""

    calls: int = 0
    passed: int = 0
    cost: float | None = 0.0
    stopped: str | None = None
    executions: list[str] = field(default_factory=list)

    def add(self, ex: Execution) -> None:
        self.calls += 1
        self.passed += 1 if ex.passed else 0
        self.cost = _plus(self.cost, spent(ex))


def spent(ex: Execution) -> float | None:
    """What a call cost: its priced usage; a call that failed before any usage was
    reported has nothing to price (0); one that reported usage it could not price is
    unknown."""
    if ex.cost is None and ex.status != "completed" and ex.input_tokens is None:
        return 0.0 if ex.output_tokens is None else None
    return ex.cost


def _plus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _over(budget: Budget, started: int, cost: float | None, elapsed: float) -> str | None:
    if budget.calls is not None and started >= budget.calls:
        return f"budget: maxCalls {budget.calls} reached"
    if budget.cost is not None and (cost is None or cost >= budget.cost):
        shown = "unknown" if cost is None else f"{cost:.6g}"
        return f"budget: maxCost {budget.cost:g} reached (spent {shown})"
    if budget.seconds is not None and elapsed >= budget.seconds:
        return f"budget: maxSeconds {budget.seconds:g} reached"
    return None


def run_cases(
    cases: Sequence[Case],
    repeat: int,
    call: Callable[[Case], Execution],
    *,
    parallelism: int,
    budget: Budget,
    monotonic: Callable[[], float] = time.monotonic,
    also_spent: Callable[[], float | None] = lambda: 0.0,
) -> Tally:
    """Every case `repeat` times, in order (all cases, then again), at most
    `parallelism` calls at once; executions are listed in the order they started. A
    budget reached starts no more calls; the calls under way end and are counted (so
    the cost of those, at most `parallelism` calls, can go past `maxCost`).
    `also_spent` is what else the run spent so far (its judge's calls)."""
    tally = Tally()
    order = [case for _ in range(repeat) for case in cases]
    started_at = monotonic()
    running: dict[Future[Execution], int] = {}
    ended: dict[int, Execution] = {}

    def settle(done: set[Future[Execution]]) -> None:
        for f in done:
            ex = f.result()
            ended[running.pop(f)] = ex
            tally.add(ex)

    with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="eval") as pool:
        for i, case in enumerate(order):
            while len(running) >= parallelism:
                settle(wait(running, return_when=FIRST_COMPLETED).done)
            cost = _plus(tally.cost, also_spent())
            tally.stopped = _over(budget, i, cost, monotonic() - started_at)
            if tally.stopped is not None:
                break
            running[pool.submit(call, case)] = i
        settle(wait(running).done)
    tally.executions = [ended[i].id for i in sorted(ended)]
    return tally
