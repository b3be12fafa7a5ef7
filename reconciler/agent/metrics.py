"""The agent's Prometheus metrics, on a registry of its own (served at /metrics).

Labels are environment names, actions, triggers and outcomes only: nothing a metric
carries can be a secret.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Seconds: from a quick no-op to a long rollout.
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter(
            "reconciler_agent_runs",
            "Sync and heal attempts by outcome (applied, failed, interrupted: a run was "
            "recorded; blocked, noop, locked, error: none was).",
            ["environment", "trigger", "outcome"],
            registry=r,
        )
        self.changes = Counter(
            "reconciler_agent_changes",
            "Changes the agent's runs made, by action and outcome.",
            ["environment", "action", "outcome"],
            registry=r,
        )
        self.drifted = Gauge(
            "reconciler_drifted_instances",
            "Instances whose live state differs from the recorded one (or is missing), "
            "at the last drift check.",
            ["environment"],
            registry=r,
        )
        self.blocked = Gauge(
            "reconciler_environment_blocked",
            "1 while the environment's pending change is refused by the gate.",
            ["environment"],
            registry=r,
        )
        self.blocked_total = Gauge(
            "reconciler_blocked_environments",
            "How many environments the gate refuses right now.",
            registry=r,
        )
        self.duration = Histogram(
            "reconciler_apply_duration_seconds",
            "How long the agent's runs took (sync and heal), from plan to record.",
            ["environment", "trigger"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.last_sync = Gauge(
            "reconciler_last_successful_sync_timestamp_seconds",
            "When the environment was last found (or made) in sync with the deploy branch.",
            ["environment"],
            registry=r,
        )
        self.fetches = Counter(
            "reconciler_agent_fetches",
            "Fetches of the deploy branch: ok, failed (git), invalid (the commit does not load).",
            ["outcome"],
            registry=r,
        )
        self.checks = Counter(
            "reconciler_agent_sync_checks",
            "Times the agent fetched, planned and gated the environment.",
            ["environment"],
            registry=r,
        )
        self.drift_checks = Counter(
            "reconciler_agent_drift_checks",
            "Times the agent compared the environment's live and recorded state.",
            ["environment"],
            registry=r,
        )
        self.notices = Counter(
            "reconciler_agent_notices",
            "Notices queued for notification targets, by event.",
            ["environment", "event"],
            registry=r,
        )
        self._blocked: set[str] = set()

    def set_blocked(self, environment: str, blocked: bool) -> None:
        self.blocked.labels(environment).set(1 if blocked else 0)
        if blocked:
            self._blocked.add(environment)
        else:
            self._blocked.discard(environment)
        self.blocked_total.set(len(self._blocked))
