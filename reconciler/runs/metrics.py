"""Usage metrics from recorded executions, per deployment and environment: pure, so the
CLI, the dashboard and the agent's /metrics compute them the same way."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.runs.model import Execution

#: The percentiles reported, in order.
PERCENTILES = (50, 95, 99)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class UsageRow:
    environment: str
    deployment: str
    #: Calls made (completed + failed); fires that never called are counted apart.
    requests: int = 0
    completed: int = 0
    failed: int = 0
    missed: int = 0
    skipped: int = 0
    cancelled: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    input_tokens: int = 0
    output_tokens: int = 0
    #: Calls whose usage the vendor did not report.
    usage_unknown: int = 0
    cost: float = 0.0
    #: Completed calls without a declared price: the cost is then unknown.
    cost_unknown: int = 0
    currencies: set[str] = field(default_factory=set)

    @property
    def success_rate(self) -> float | None:
        return None if self.requests == 0 else self.completed / self.requests

    def latency(self, p: float) -> float | None:
        return percentile(sorted(self.latencies_ms), p)

    @property
    def total_cost(self) -> float | None:
        """None (unknown) when any completed call has no price: never a partial sum
        passed off as the whole, never 0 for unknown."""
        if self.cost_unknown or len(self.currencies) > 1:
            return None
        return round(self.cost, 10) if self.completed else None

    def document(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "deployment": self.deployment,
            "requests": self.requests,
            "completed": self.completed,
            "failed": self.failed,
            "missed": self.missed,
            "skipped": self.skipped,
            "cancelled": self.cancelled,
            "success_rate": self.success_rate,
            "latency_ms": {f"p{p}": self.latency(p) for p in PERCENTILES},
            "tokens": {
                "input": self.input_tokens,
                "output": self.output_tokens,
                "unreported_calls": self.usage_unknown,
            },
            "cost": self.total_cost,
            "currency": next(iter(self.currencies)) if len(self.currencies) == 1 else None,
            "cost_unknown_calls": self.cost_unknown,
        }


def usage(executions: Iterable[Execution]) -> list[UsageRow]:
    """One row per (environment, deployment), sorted by both."""
    rows: dict[tuple[str, str], UsageRow] = {}
    for ex in executions:
        row = rows.setdefault(
            (ex.environment, ex.deployment), UsageRow(ex.environment, ex.deployment)
        )
        if ex.status in ("missed", "skipped", "cancelled"):
            setattr(row, ex.status, getattr(row, ex.status) + 1)
            continue
        if ex.status not in ("completed", "failed"):
            continue  # under way: counted once it ends
        row.requests += 1
        if ex.status == "failed":
            row.failed += 1
            continue
        row.completed += 1
        if ex.latency_ms is not None:
            row.latencies_ms.append(ex.latency_ms)
        if ex.input_tokens is None or ex.output_tokens is None:
            row.usage_unknown += 1
        row.input_tokens += ex.input_tokens or 0
        row.output_tokens += ex.output_tokens or 0
        if ex.cost is None:
            row.cost_unknown += 1
        else:
            row.cost += ex.cost
            row.currencies.add(ex.currency or "USD")
    return [rows[k] for k in sorted(rows)]
