"""Checks after apply: each Check whose deployment a run changed sends its requests
through the run path (`runs.execute`, the same call `reconciler run` makes), still under
the run's lock, and records every request as an execution with trigger `check`, its
evidence digest and each expectation with its measured value. Any failed expectation
fails the run; `onFail: rollback` restores what the run wrote."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from reconciler.checks.evidence import evidence_digest_of
from reconciler.checks.expect import Outcome, judge
from reconciler.errors import ReconcilerError
from reconciler.executor import AfterApplyFn, ChangeResult, Verification
from reconciler.instances import InstanceKey, ProviderConfig
from reconciler.manifests.models import Check
from reconciler.providers.base import Provider
from reconciler.providers.pool import ProviderPool
from reconciler.runs.execute import Limits, execute
from reconciler.runs.model import Execution, Holder, new_id
from reconciler.runs.store import ExecutionStore
from reconciler.state.base import AppliedRecord, StateStore

Clock = Callable[[], datetime]


def checks_for(checks: Sequence[Check], environment: str, changed: set[str]) -> list[Check]:
    """The checks of `environment` whose deployment is among those changed."""
    return [
        c for c in checks if environment in c.spec.environments and c.spec.deployment in changed
    ]


def after_apply(
    checks: Sequence[Check],
    store: StateStore,
    open_executions: Callable[[], ExecutionStore],
    providers: Mapping[str, ProviderConfig],
    *,
    limits: Limits = Limits(),
    clock: Clock = lambda: datetime.now(UTC),
) -> AfterApplyFn:
    """The executor's hook for one environment's run."""

    def verify(
        environment: str, run_id: str, results: Sequence[ChangeResult], pool: ProviderPool
    ) -> Verification:
        changed = {
            r.change.name
            for r in results
            if r.change.kind == "Deployment"
            and r.change.action != "delete"
            and r.outcome == "applied"
        }
        due = checks_for(checks, environment, changed)
        if not due:
            return Verification()
        executions = open_executions()
        try:
            return _run_all(
                due, environment, run_id, store, executions, pool, providers, limits, clock
            )
        finally:
            executions.close()

    return verify


def _run_all(
    due: Sequence[Check],
    environment: str,
    run_id: str,
    store: StateStore,
    executions: ExecutionStore,
    pool: ProviderPool,
    providers: Mapping[str, ProviderConfig],
    limits: Limits,
    clock: Clock,
) -> Verification:
    out = Verification()
    recorded: dict[str, list[dict[str, object]]] = {}
    for check in due:
        name = check.metadata.name
        key = InstanceKey(environment, "Deployment", check.spec.deployment)
        record = store.applied(environment, [key]).get(key)
        if record is None:  # cannot happen after a successful change; fail closed
            out.failures.append(f"check {name}: deployment.{key.name} is not recorded applied")
            continue
        if record.spec.get("suspended") is True:  # it takes no calls: nothing to check
            recorded.setdefault(name, [])
            continue
        config = providers.get(record.provider)
        digest = evidence_digest_of(record.spec, config.type if config else record.provider)
        try:
            provider = pool.get(record.provider)
        except ReconcilerError as e:
            out.failures.append(f"check {name}: {e.message}")
            out.rollback = out.rollback or check.spec.on_fail == "rollback"
            continue
        for r in run_requests(
            check, record, digest, provider, executions, limits=limits, clock=clock
        ):
            if r.execution is not None:
                recorded.setdefault(name, []).append(
                    {"execution": r.execution.id, "passed": r.passed, "digest": digest}
                )
            if r.failure is not None:
                out.failures.append(f"check {name} {r.failure}")
                out.rollback = out.rollback or check.spec.on_fail == "rollback"
    out.details["checks"] = recorded
    return out


@dataclass(frozen=True)
class RequestResult:
    """One request of a check: its execution as recorded (None: it could not be
    recorded), each expectation, and what failed ("request N (ID): …"; None: passed)."""

    index: int
    execution: Execution | None
    outcomes: tuple[Outcome, ...] = ()
    failure: str | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None


def run_requests(
    check: Check,
    record: AppliedRecord,
    digest: str,
    provider: Provider,
    executions: ExecutionStore,
    *,
    limits: Limits,
    clock: Clock,
    claimed: Execution | None = None,
) -> list[RequestResult]:
    """Each request of `check` through the run path on `record`, recorded with trigger
    `check`, judged, and its expectations recorded. `claimed`: the first request's
    execution, recorded `pending` already (a re-check's claim on its due time)."""
    out: list[RequestResult] = []
    name = check.metadata.name
    for i, req in enumerate(check.spec.requests):
        if i == 0 and claimed is not None:
            ex, new = claimed, False
        else:
            at = clock()
            ex = Execution(new_id(at), record.environment, record.name, "check", "pending", at)
            ex.holder = Holder.me()
            ex.check, ex.digest, new = name, digest, True
        try:
            done = execute(
                executions, ex, provider, record, req.input, limits=limits, clock=clock, new=new
            )
        except ReconcilerError as e:
            out.append(RequestResult(i + 1, None, failure=f"request {i + 1}: {e.message}"))
            continue
        outcomes = judge(req.expect, done)
        done.passed = all(o.ok for o in outcomes)
        done.expectations = [o.document() for o in outcomes]
        executions.transition(done, (done.status,))
        failure = None
        if not done.passed:
            failure = "; ".join(o.line() for o in outcomes if not o.ok)
            if done.error:
                failure += f" ({done.error})"
            failure = f"request {i + 1} ({done.id}): {failure}"
        out.append(RequestResult(i + 1, done, tuple(outcomes), failure))
    return out
