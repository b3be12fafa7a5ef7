"""`metrics` reports: one line per deployment and environment; unknown said, never 0."""

from __future__ import annotations

import json as _json

from reconciler.engine.metrics import MetricsReport
from reconciler.runs.metrics import PERCENTILES, UsageRow
from reconciler.views.run import latency_text
from reconciler.views.text import join_lines


def cost(row: UsageRow) -> str:
    total = row.total_cost
    if total is None:
        return "unknown" if row.completed else "-"
    return f"{total:.6f} {next(iter(row.currencies))}"


def human(report: MetricsReport) -> str:
    if not report.rows:
        return "No executions recorded.\n"
    lines = [
        f"{'ENVIRONMENT':<12} {'DEPLOYMENT':<20} {'REQ':>5} {'OK%':>6} "
        + " ".join(f"{'P' + str(p):>8}" for p in PERCENTILES)
        + f" {'TOKENS IN/OUT':>15} {'COST':>16}"
    ]
    for r in report.rows:
        rate = "-" if r.success_rate is None else f"{100 * r.success_rate:.1f}"
        tokens = f"{r.input_tokens}/{r.output_tokens}" + ("+?" if r.usage_unknown else "")
        lines.append(
            f"{r.environment:<12} {r.deployment:<20} {r.requests:>5} {rate:>6} "
            + " ".join(f"{latency_text(r.latency(p)):>8}" for p in PERCENTILES)
            + f" {tokens:>15} {cost(r):>16}"
        )
        counts = (("missed", r.missed), ("skipped", r.skipped), ("cancelled", r.cancelled))
        other = [f"{n} {status}" for status, n in counts if n]
        if other:
            lines.append(f"{'':<12} {'':<20} not run: {', '.join(other)}")
    return join_lines(lines)


def json(report: MetricsReport) -> str:
    return _json.dumps([r.document() for r in report.rows], indent=2, sort_keys=True) + "\n"
