"""Executions as Prometheus metrics on the agent's registry (its /metrics): how many by
status, how long they took (a histogram) and the tokens they used. Labels are
environment, deployment (both bounded by the manifests), trigger and status: nothing a
metric carries can be a secret."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from reconciler.runs.model import Execution

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
