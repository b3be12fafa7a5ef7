"""Usage metrics are a pure function of executions: percentiles by nearest rank,
unknown usage and cost kept apart from zero."""

from __future__ import annotations

from datetime import UTC, datetime

from reconciler.runs.metrics import percentile, usage
from reconciler.runs.model import Execution

T0 = datetime(2026, 11, 23, tzinfo=UTC)


def ex(status: str, latency: float | None = None, cost: float | None = None) -> Execution:
    e = Execution(f"ex-{status}-{latency}", "dev", "chat", "manual", status, T0)  # type: ignore[arg-type]
    e.latency_ms, e.cost, e.currency = latency, cost, "USD" if cost is not None else None
    e.input_tokens = e.output_tokens = 1 if status == "completed" else None
    return e


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (50, 95, 99)] == [50.0, 95.0, 99.0]
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_fires_that_never_called_are_not_requests() -> None:
    (row,) = usage([ex("completed", 10, 0.5), ex("failed"), ex("missed"), ex("skipped")])
    assert (row.requests, row.completed, row.failed, row.missed, row.skipped) == (2, 1, 1, 1, 1)
    assert row.success_rate == 0.5 and row.total_cost == 0.5


def test_one_call_without_a_price_makes_the_cost_unknown() -> None:
    (row,) = usage([ex("completed", 10, 0.5), ex("completed", 20, None)])
    assert row.total_cost is None and row.cost_unknown == 1
    assert row.document()["cost"] is None
