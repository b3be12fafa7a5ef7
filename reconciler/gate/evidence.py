"""The promotion gate's facts: what a promotion source holds for each deployment a
change alters. Read from the recorded state (what the source has applied, since when)
and the check executions recorded beside it, never from the change or a PR's text."""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.checks.evidence import evidence_digest_of
from reconciler.gate.judge import EvalRun, Evidence
from reconciler.instances import InstanceKey
from reconciler.manifests import Desired
from reconciler.plan import EnvironmentPlan
from reconciler.runs.model import Execution, Query
from reconciler.runs.store import ExecutionStore
from reconciler.state.base import StateStore


def changed_deployments(plan: EnvironmentPlan) -> list[str]:
    """Deployments the plan creates or changes (a removal promotes nothing)."""
    return sorted(
        {c.key.name for c in plan.changes if c.kind == "Deployment" and c.action != "delete"}
    )


def gather_evidence(
    plan: EnvironmentPlan,
    desired: Desired,
    store: StateStore,
    executions: ExecutionStore,
    sources: Iterable[str],
) -> list[Evidence]:
    env = plan.environment
    names = changed_deployments(plan)
    out: list[Evidence] = []
    for name in names:
        inst = desired.instances.get(env, {}).get(InstanceKey(env, "Deployment", name))
        if inst is None:
            continue
        config = desired.providers.get(env, {}).get(inst.provider)
        digest = evidence_digest_of(inst.spec, config.type if config else inst.provider)
        for source in sorted(sources):
            out.append(evidence_for(name, digest, source, desired, store, executions))
    return out


def evidence_for(
    name: str,
    digest: str,
    source: str,
    desired: Desired,
    store: StateStore,
    executions: ExecutionStore,
) -> Evidence:
    """What `source` holds for deployment `name`, judged for `digest`."""
    key = InstanceKey(source, "Deployment", name)
    record = store.applied(source, [key]).get(key)
    if record is None:
        return Evidence(name, source, digest)
    # The provider kind of the source's provider: a provider's type is part of its
    # policy of record, so the desired one stands for it.
    config = desired.providers.get(source, {}).get(record.provider)
    applied = evidence_digest_of(record.spec, config.type if config else record.provider)
    found = executions.find(
        Query(environments=(source,), deployments=(name,), since=record.applied_at, limit=None)
    )
    checks = [e for e in found if e.trigger == "check" and e.passed is not None]
    passed = sum(1 for e in checks if e.passed and e.digest == digest)
    failed = sum(1 for e in checks if not e.passed)
    return Evidence(
        name, source, digest, applied, record.applied_at, passed, failed, eval_runs(found, digest)
    )


def eval_runs(found: Iterable[Execution], digest: str) -> tuple[EvalRun, ...]:
    """The eval runs among `found` on exactly `digest`, oldest first (run ids are
    time-ordered); advisory ones (a pull request's) are never evidence."""
    by_run: dict[str, list[Execution]] = {}
    for e in found:
        if e.trigger == "eval" and e.eval_run and not e.advisory and e.digest == digest:
            by_run.setdefault(e.eval_run, []).append(e)
    out = []
    for run, xs in sorted(by_run.items()):
        judged = [e for e in xs if e.passed is not None]
        first = xs[0]
        out.append(
            EvalRun(
                first.check or "",
                run,
                first.eval_digest or "",
                len(judged),
                sum(1 for e in judged if e.passed),
                first.planned or 0,
                first.baseline,
            )
        )
    return tuple(out)


def baseline_of(
    executions: ExecutionStore,
    environment: str,
    eval_name: str,
    deployment: str,
    eval_digest: str,
    digest: str,
) -> float | None:
    """The pass rate of the latest complete, non-advisory run of an eval (with exactly
    `eval_digest`) on exactly `digest` in the baseline `environment` itself, or None when
    there is none. Only there: the evidence digest says what answers, not with which
    provider settings, so a run elsewhere (another environment's provider, even a broken
    one) could set the bar."""
    found = executions.find(
        Query(environments=(environment,), deployments=(deployment,), limit=None)
    )
    runs = [
        r
        for r in eval_runs((e for e in found if e.check == eval_name), digest)
        if r.eval_digest == eval_digest and r.calls >= r.planned and r.calls
    ]
    return None if not runs else runs[-1].passed / runs[-1].calls
