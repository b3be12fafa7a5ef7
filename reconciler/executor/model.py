"""What the executor's modules share: the results it hands back, the run's context and
deadline, the callbacks it calls, and the small pure helpers they all use."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from graphlib import CycleError, TopologicalSorter
from typing import Any

from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.errors import ReconcilerError, StateError
from reconciler.instances import Instance, InstanceKey
from reconciler.log import redact
from reconciler.plan import Change
from reconciler.providers.base import HealthStatus, Provider
from reconciler.providers.pool import ProviderPool
from reconciler.state.base import AppliedRecord
from reconciler.vocabulary import READY, ChangeOutcome, EnvironmentOutcome, Trigger

ROLLBACK_REASON = "rollback-on-failure"
#: The longest pause between two health polls a provider's Retry-After can ask for.
RETRY_AFTER_CAP = 300.0
#: Where a run's deadline comes from, for its message.
RUN_TIMEOUT_SOURCE = "--run-timeout / RECONCILER_RUN_TIMEOUT"


def worker_count(parallelism: int, changes: int) -> int:
    """Threads for a run: a few beyond the parallelism, which record finished changes
    while `parallelism` provider calls go on, so recording never leaves a slot idle."""
    return max(1, min(parallelism + max(2, parallelism // 4), changes))


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: UTC time plus randomness."""
    now = now or SYSTEM_CLOCK.now()
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass
class RunContext:
    """What a run records beyond its changes (who, why, from where)."""

    commit: str | None
    trigger: Trigger = "apply"
    pull_request: int | None = None
    author: str | None = None
    approvers: list[str] = field(default_factory=list)
    reverted_commits: list[str] = field(default_factory=list)
    reverted_runs: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: The policy the run leaves in force: the next run is judged by it.
    policy: dict[str, Any] | None = None


@dataclass(slots=True)
class ChangeResult:
    change: Change
    outcome: ChangeOutcome
    error: str | None = None
    provider_id: str | None = None
    #: The provider's write happened (even if the object then never became Healthy):
    #: what `--rollback-on-failure` puts back.
    written: bool = False
    #: The last health seen while waiting (None: not waited for).
    health: HealthStatus | None = None


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A waiting change's health changed (`health` None: it stopped waiting)."""

    change: Change
    health: HealthStatus | None
    waited: float


@dataclass(frozen=True)
class RunDeadline:
    """When a run must be over (on `clock`'s monotonic time), and how to name it in a
    message."""

    seconds: float
    at: float
    source: str = RUN_TIMEOUT_SOURCE
    clock: Clock = field(default=SYSTEM_CLOCK, compare=False, repr=False)

    @classmethod
    def starting_now(
        cls, seconds: float, source: str = RUN_TIMEOUT_SOURCE, clock: Clock = SYSTEM_CLOCK
    ) -> RunDeadline:
        return cls(seconds, clock.monotonic() + seconds, source, clock)

    def passed(self, now: float | None = None) -> bool:
        return (self.clock.monotonic() if now is None else now) >= self.at

    def left(self) -> float:
        return self.at - self.clock.monotonic()

    def __str__(self) -> str:
        return f"the run deadline of {self.seconds:g} s ({self.source})"


@dataclass
class EnvironmentResult:
    environment: str
    outcome: EnvironmentOutcome
    run_id: str | None = None
    results: list[ChangeResult] = field(default_factory=list)
    message: str | None = None
    restored: list[ChangeResult] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = {"applied": 0, "failed": 0, "skipped": 0}
        for r in self.results:
            c[r.outcome] += 1
        return c


@dataclass
class Verification:
    """What the checks after a run said: each failure as a line (none: passed), whether
    to restore what the run wrote, and what the run record keeps of them."""

    failures: list[str] = field(default_factory=list)
    rollback: bool = False
    details: dict[str, Any] = field(default_factory=dict)


#: After a run applied every change, still under its lock: (environment, run id, the
#: changes' results, the run's providers) → what the checks of what it applied said.
AfterApplyFn = Callable[[str, str, Sequence["ChangeResult"], ProviderPool], Verification]

#: Told of every finished change; called from worker threads, one call at a time.
ProgressFn = Callable[[ChangeResult], None]
#: Told when a waiting change's health changes; from worker threads, one at a time.
HealthFn = Callable[[HealthEvent], None]


def readiness_timeout(provider: Provider, inst: Instance | None) -> float:
    """How long to wait for `inst` to become Healthy: its own `readinessTimeoutSeconds`,
    else its provider's default; 0 means ready when the write returns."""
    own = inst.spec.get("readinessTimeoutSeconds") if inst is not None else None
    if isinstance(own, int | float) and not isinstance(own, bool) and own > 0:
        return float(own)
    return max(0.0, float(provider.readiness_timeout))


def health_failure(status: HealthStatus) -> str | None:
    """Why `status` fails a change just written, or None when it does not (yet)."""
    if status.health in READY or status.health == "Progressing":
        return None
    return health_text(status)


def health_text(status: HealthStatus | None) -> str:
    if status is None:
        return "no health read yet"
    return f"{status.health}: {status.message}" if status.message else status.health


def instance_from_record(rec: AppliedRecord) -> Instance:
    """The instance a recorded body describes (heal and restore re-apply it)."""
    spec = {k: v for k, v in rec.spec.items() if k not in ("name", "environment", "labels")}
    return Instance(
        environment=rec.environment,
        kind=rec.kind,
        name=rec.name,
        provider=rec.provider,
        spec=spec,
        labels=dict(rec.spec.get("labels") or {}),
    )


def error_text(e: BaseException) -> str:
    """One redacted line for a run or change record."""
    if isinstance(e, ReconcilerError):
        return redact(e.message)
    text = str(e)
    return redact(f"{type(e).__name__}: {text}" if text else type(e).__name__)


def dependency_order(changes: Sequence[Change]) -> TopologicalSorter[InstanceKey]:
    """The changes' dependency graph, prepared; dependencies outside the plan are met.

    Expansion never produces a cycle, but a hand-edited saved plan could: refuse it
    before anything runs rather than guess an order."""
    keys = {c.key for c in changes}
    graph: TopologicalSorter[InstanceKey] = TopologicalSorter()
    for c in changes:
        graph.add(c.key, *(d for d in c.depends_on if d in keys))
    try:
        graph.prepare()
    except CycleError as e:
        cycle = " → ".join(k.address for k in e.args[1])
        raise ReconcilerError(f"changes wait on each other ({cycle}); refusing to guess") from None
    return graph


def failed_dependency(ch: Change, done: Mapping[InstanceKey, ChangeResult]) -> InstanceKey | None:
    """The first dependency in this run that did not apply (its dependants are skipped)."""
    for d in ch.depends_on:
        res = done.get(d)
        if res is not None and res.outcome != "applied":
            return d
    return None


class NotStarted(BaseException):
    """The run stopped while this change waited for a provider slot."""


class LockLost(BaseException):
    """The run's lock was found lost just before a provider call (which was not made)."""

    def __init__(self, error: StateError) -> None:
        super().__init__(error.message)
        self.error = error
