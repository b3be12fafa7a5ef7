"""`run` and `executions` reports: one execution whole, or a list like a log viewer."""

from __future__ import annotations

import json as _json
from typing import Any

from reconciler.engine.run import RunReport
from reconciler.runs.model import Execution
from reconciler.views.text import join_lines


def _usage(ex: Execution) -> str:
    def n(v: int | None) -> str:
        return "?" if v is None else str(v)

    return f"{n(ex.input_tokens)} in / {n(ex.output_tokens)} out"


def cost_text(cost: float | None, currency: str | None) -> str:
    """Unknown is said, never shown as 0."""
    return "unknown (no price declared)" if cost is None else f"{cost:.6f} {currency or ''}".strip()


def latency_text(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def execution_human(ex: Execution) -> str:
    lines = [
        f"execution {ex.id}: {ex.status}",
        f"  deployment.{ex.deployment} in {ex.environment} ({ex.trigger}"
        + (
            f", schedule {ex.schedule} at {ex.fire_time:%Y-%m-%d %H:%M:%S %Z}"
            if ex.schedule and ex.fire_time
            else ""
        )
        + ")",
        f"  applied by run {ex.applied_run or '-'} (spec {(ex.spec_hash or '-')[:12]}, "
        f"commit {(ex.commit or '-------')[:7]}), provider {ex.provider or '-'}",
        f"  latency {latency_text(ex.latency_ms)}, tokens {_usage(ex)}, "
        f"cost {cost_text(ex.cost, ex.currency)}",
    ]
    if ex.started_at:
        lines.append(
            f"  started {ex.started_at:%Y-%m-%d %H:%M:%S}"
            + (f", finished {ex.finished_at:%H:%M:%S}" if ex.finished_at else "")
        )
    lines.append(f"  input  {ex.input}")
    if ex.error:
        lines.append(f"  error  {ex.error}")
    if ex.result is not None:
        cut = (
            f" (cut at {len(ex.result.encode())} of {ex.result_bytes} bytes)"
            if ex.truncated
            else ""
        )
        lines.append(f"output{cut}:")
        lines.extend(ex.result.splitlines() or [""])
    return join_lines(lines)


def human(report: RunReport) -> str:
    return execution_human(report.execution)


def json_document(ex: Execution) -> str:
    return _json.dumps(ex.document(), indent=2, sort_keys=True) + "\n"


def json(report: RunReport) -> str:
    return json_document(report.execution)


def list_human(executions: list[Execution]) -> str:
    if not executions:
        return "No executions recorded.\n"
    lines = []
    for ex in executions:
        what = ex.error or (ex.result or "").replace("\n", " ")
        lines.append(
            f"{ex.id}  {ex.created_at:%Y-%m-%d %H:%M:%S}  {ex.environment:<12} "
            f"{ex.deployment:<20} {ex.trigger:<8} {ex.status:<9} "
            f"{latency_text(ex.latency_ms):>8}  {what[:60]}"
        )
    return join_lines(lines)


def list_document(executions: list[Execution]) -> list[dict[str, Any]]:
    return [ex.document() for ex in executions]


def list_json(executions: list[Execution]) -> str:
    return _json.dumps(list_document(executions), indent=2, sort_keys=True) + "\n"
