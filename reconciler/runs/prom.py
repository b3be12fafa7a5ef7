"""Executions as Prometheus metrics on the agent's registry (its /metrics): how many by
status, how long they took (a histogram) and the tokens they used. Labels are
environment, deployment (both bounded by the manifests), trigger and status: nothing a
metric carries can be a secret."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from reconciler.runs.model import Execution

if TYPE_CHECKING:
    from pathlib import Path

    from reconciler.checks.recheck import Recheck
    from reconciler.engine.evaluate import EvalReport

#: Seconds: from a cached answer to a long generation.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ExecutionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.executions = Counter(
            "reconciler_executions",
            "Executions the agent recorded (schedule fires), by how they ended.",
            ["environment", "deployment", "trigger", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "reconciler_execution_latency_seconds",
            "How long each call of a deployment took (completed and failed calls).",
            ["environment", "deployment", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "reconciler_execution_tokens",
            "Tokens the calls used, as the vendors reported them.",
            ["environment", "deployment", "direction"],
            registry=registry,
        )

    def observe(self, ex: Execution) -> None:
        """One execution that ended (called once per execution)."""
        self.executions.labels(ex.environment, ex.deployment, ex.trigger, ex.status).inc()
        if ex.latency_ms is not None and ex.status in ("completed", "failed"):
            self.latency.labels(ex.environment, ex.deployment, ex.status).observe(
                ex.latency_ms / 1000
            )
        for direction, n in (("input", ex.input_tokens), ("output", ex.output_tokens)):
            if n:
                self.tokens.labels(ex.environment, ex.deployment, direction).inc(n)


class CheckMetrics:
    """Re-checks the agent ran (`checks.recheck`): outcomes, latencies and the values
    measured. Labels are environment, deployment, check (all bounded by the manifests)
    and the expectation's name (a fixed vocabulary); never an answer or an input."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "reconciler_check_runs",
            "Re-checks the agent ran, by outcome (passed: every request met every "
            "expectation; failed: one did not).",
            ["environment", "deployment", "check", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "reconciler_check_latency_seconds",
            "How long each request of a re-check took.",
            ["environment", "deployment", "check"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.failed = Counter(
            "reconciler_check_failed_expectations",
            "Expectations that did not hold in a re-check, by expectation.",
            ["environment", "deployment", "check", "expectation"],
            registry=registry,
        )
        self.measured = Gauge(
            "reconciler_check_measured",
            "The numeric values the last re-check measured (latencyMsMax: milliseconds, "
            "costMax: the price's currency, number: the answer), the largest of its requests.",
            ["environment", "deployment", "check", "expectation"],
            registry=registry,
        )

    def observe_check(self, done: Recheck) -> None:
        labels = (done.environment, done.deployment, done.check)
        self.runs.labels(*labels, "passed" if done.passed else "failed").inc()
        largest: dict[str, float] = {}
        for r in done.results:
            ex = r.execution
            if ex is not None and ex.latency_ms is not None:
                self.latency.labels(*labels).observe(ex.latency_ms / 1000)
            for o in r.outcomes:
                if not o.ok:
                    self.failed.labels(*labels, o.name).inc()
                value = o.measured
                if isinstance(value, int | float) and not isinstance(value, bool):
                    largest[o.name] = max(float(value), largest.get(o.name, float(value)))
        for name, value in largest.items():
            self.measured.labels(*labels, name).set(value)


def write_eval_metrics(report: EvalReport, path: Path) -> None:
    """An eval run's outcome as Prometheus text, for a batch job's metrics (node
    exporter's textfile collector, or a push): the pass rate beside its bar, the calls,
    the cost, and the outcome as a 0/1 gauge per outcome. Written to a temporary file
    and renamed, so a scrape never reads half a file."""
    from prometheus_client import write_to_textfile

    registry = CollectorRegistry()
    labels = {"environment": report.environment, "deployment": report.deployment,
              "eval": report.eval}  # fmt: skip

    def gauge(name: str, help_: str, value: float | None, **extra: str) -> None:
        if value is None:
            return
        g = Gauge(name, help_, [*labels, *extra], registry=registry)
        g.labels(**labels, **extra).set(value)

    gauge("reconciler_eval_pass_rate", "Pass rate of the eval's last run.", report.pass_rate)
    gauge("reconciler_eval_min_pass_rate", "The bar it was judged by.", report.min_pass_rate)
    gauge("reconciler_eval_calls", "Calls the run judged.", report.calls)
    gauge("reconciler_eval_passed_calls", "Calls whose expectations held.", report.passed)
    gauge("reconciler_eval_cost", "What the calls cost (absent when unknown).", report.cost)
    outcome = Gauge(
        "reconciler_eval_outcome",
        "1 for the run's outcome, 0 for the others.",
        [*labels, "outcome"],
        registry=registry,
    )
    for name in ("passed", "failed", "inconclusive", "stopped"):
        outcome.labels(**labels, outcome=name).set(1 if report.outcome == name else 0)
    write_to_textfile(str(path), registry)
