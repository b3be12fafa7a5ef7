"""Checks after apply: each Check whose deployment a run changed sends its requests
through the run path (`runs.execute`, the same call `reconciler run` makes), still under
the run's lock, and records every request as an execution with trigger `check`, its
evidence digest and each expectation with its measured value. Any failed expectation
fails the run; `onFail: rollback` restores what the run wrote."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from reconciler.checks.evidence import evidence_digest_of
from reconciler.checks.expect import judge
from reconciler.errors import ReconcilerError
from reconciler.executor import AfterApplyFn, ChangeResult, Verification
from reconciler.instances import InstanceKey, ProviderConfig
from reconciler.manifests.models import Check
from reconciler.providers.pool import ProviderPool
from reconciler.runs.execute import Limits, execute
from reconciler.runs.model import Execution, Holder, new_id
from reconciler.runs.store import ExecutionStore
from reconciler.state.base import StateStore

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
        for i, req in enumerate(check.spec.requests):
            at = clock()
            ex = Execution(new_id(at), environment, key.name, "check", "pending", at)
            ex.holder = Holder.me()
            ex.check, ex.digest = name, digest
            try:
                done = execute(
                    executions, ex, provider, record, req.input, limits=limits, clock=clock
                )
            except ReconcilerError as e:
                out.failures.append(f"check {name} request {i + 1}: {e.message}")
                out.rollback = out.rollback or check.spec.on_fail == "rollback"
                continue
            outcomes = judge(req.expect, done)
            done.passed = all(o.ok for o in outcomes)
            done.expectations = [o.document() for o in outcomes]
            executions.transition(done, (done.status,))
            recorded.setdefault(name, []).append(
                {"execution": done.id, "passed": done.passed, "digest": digest}
            )
            if not done.passed:
                bad = "; ".join(o.line() for o in outcomes if not o.ok)
                if done.error:
                    bad += f" ({done.error})"
                out.failures.append(f"check {name} request {i + 1} ({done.id}): {bad}")
                out.rollback = out.rollback or check.spec.on_fail == "rollback"
    out.details["checks"] = recorded
    return out
