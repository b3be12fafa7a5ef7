"""The executor: the only code that changes providers.

Per environment, under its lock: re-check the plan against the state serial, run the
changes in dependency order with bounded concurrency, record each change in the state
the moment it succeeds (so a crash loses nothing and a re-run converges), skip the
dependants of a failed change, optionally restore what this run changed when anything
failed, and finish with a run record. Whatever goes wrong after the run began (a state
write failing, a bug), the run is finished `failed` with the reason before the lock
is released.

Readiness: after a create, update or replace, the change is done only when its object
is Healthy (or Suspended: paused on purpose), up to a readiness timeout (the
deployment's `readinessTimeoutSeconds`, else its provider's `readiness_timeout`; 0 is
ready when the write returns). Degraded, Missing, a timeout or the run deadline passing
fail the change; its write did happen, so `--rollback-on-failure` restores it too and
waits for the restored object.

A run deadline (`run_timeout`) bounds the whole run: once it passes, no change starts
(each is recorded `skipped`, naming the deadline), waiting ones fail at once, and the
run finishes `failed`, releasing the lock. Restoring after a failure is not cut short
by it (putting back matters more); its waits are bounded by the readiness timeouts.

A lost lock stops the run before its next provider call, not only at its next state
write: every provider write is preceded by `StateStore.check_lock` (one round trip).
Once it fails, no change starts (each is recorded `skipped`, naming the lost lock),
waiting ones fail without another poll, nothing is restored (another run may hold the
environment now), the run is recorded `failed` where the state still takes it, and the
StateMovedError is raised (exit 4).

The package is split by verb: `run.py` (the run's lifecycle), `schedule.py` (the ready
queue, the timed polls and the workers), `change.py` (one change), `wait.py` (health
waits), `restore.py` (inverse changes, through the same change and wait code),
`record.py` (what the state records of a write), `model.py` (results, context,
deadline). Time is an injected `reconciler.clock.Clock`; tests pass a `FakeClock`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.instances import Instance, InstanceKey, ProviderConfig
from reconciler.plan import EnvironmentPlan
from reconciler.providers.pool import ProviderFactory, ProviderPool
from reconciler.state.base import StateStore

from .change import Executor
from .model import (
    RETRY_AFTER_CAP,
    ROLLBACK_REASON,
    RUN_TIMEOUT_SOURCE,
    AfterApplyFn,
    ChangeResult,
    EnvironmentResult,
    HealthEvent,
    HealthFn,
    ProgressFn,
    RunContext,
    RunDeadline,
    Verification,
    dependency_order,
    health_failure,
    instance_from_record,
    new_run_id,
    readiness_timeout,
    worker_count,
)
from .run import Run
from .wait import Waiting

__all__ = [
    "RETRY_AFTER_CAP",
    "ROLLBACK_REASON",
    "RUN_TIMEOUT_SOURCE",
    "AfterApplyFn",
    "ChangeResult",
    "EnvironmentResult",
    "Executor",
    "HealthEvent",
    "HealthFn",
    "ProgressFn",
    "RunContext",
    "RunDeadline",
    "RunRequest",
    "Verification",
    "Waiting",
    "dependency_order",
    "execute_environment",
    "health_failure",
    "instance_from_record",
    "new_run_id",
    "readiness_timeout",
    "worker_count",
]


@dataclass(frozen=True)
class RunRequest:
    """What one environment's run needs besides its store and plan, in one value (as
    Terraform's `Operation`): what is desired, who calls providers, how far the run may
    go, and who hears of it. Callers build it once; the executor never reaches back."""

    desired: Mapping[InstanceKey, Instance]
    providers: Mapping[str, ProviderConfig]
    context: RunContext
    #: Makes provider clients (the session's, or a test's in-memory one).
    provider_factory: ProviderFactory
    parallelism: int = 8
    rollback_on_failure: bool = False
    break_lock: bool = False
    #: Recomputes the plan under the lock; without it (a saved plan) the state serial
    #: must still be the one the plan was made at.
    replan: Callable[[], EnvironmentPlan] | None = None
    progress: ProgressFn | None = None
    health: HealthFn | None = None
    #: Seconds from the run's start to its deadline, named by `run_timeout_source`.
    run_timeout: float | None = None
    run_timeout_source: str = RUN_TIMEOUT_SOURCE
    after_apply: AfterApplyFn | None = None
    #: What every wait, deadline and timestamp of the run reads.
    clock: Clock = SYSTEM_CLOCK


def execute_environment(
    store: StateStore, plan: EnvironmentPlan, request: RunRequest
) -> EnvironmentResult:
    """Lock, verify, run, record."""
    r = request
    clock = r.clock
    run_id = new_run_id(clock.now())
    deadline = (
        None
        if r.run_timeout is None
        else RunDeadline.starting_now(
            r.run_timeout, r.run_timeout_source or RUN_TIMEOUT_SOURCE, clock
        )
    )
    with ProviderPool(r.providers, r.provider_factory) as pool:
        executor = Executor(
            store,
            desired=r.desired,
            providers=pool,
            clock=clock,
            parallelism=r.parallelism,
            progress=r.progress,
            health=r.health,
            deadline=deadline,
        )
        run = Run(
            store,
            run_id,
            r.context,
            executor,
            rollback_on_failure=r.rollback_on_failure,
            break_lock=r.break_lock,
            after_apply=r.after_apply,
            pool=pool,
        )
        return run.under_lock(plan, r.replan)
