"""`reconciler eval EVAL --env E`: an Eval's dataset (a JSONL blob at the commit loaded)
sent through the run path to the deployment as recorded applied, each case `repeat`
times, every call recorded as an execution with trigger `eval`; the outcome from the
pass rate, the minimum sample and the call budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from reconciler import ci
from reconciler.agent.notify import Notifier
from reconciler.checks.eval import Budget, Case, needs_judge, read_cases, run_cases, spent
from reconciler.checks.evidence import eval_digest, eval_document, evidence_digest_of
from reconciler.checks.expect import Outcome, graded, judge
from reconciler.engine.context import register_recorded
from reconciler.engine.live import Providers, providers_of_record
from reconciler.engine.run import limits
from reconciler.errors import EXIT_BLOCKED, EXIT_ERROR, EXIT_OK, ConfigError, ReconcilerError
from reconciler.gate.evidence import baseline_of
from reconciler.gate.judge import baseline_problem
from reconciler.instances import InstanceKey
from reconciler.manifests.models import EvalSpec
from reconciler.policy import Policy
from reconciler.providers.base import Provider
from reconciler.runs.execute import as_text, execute, price
from reconciler.runs.model import Execution, Holder, Query, new_id
from reconciler.runs.store import ExecutionStore, reap
from reconciler.session import Session
from reconciler.state.base import AppliedRecord, StateStore
from reconciler.views.agent import eval_notice

EvalOutcome = Literal["passed", "failed", "inconclusive", "stopped"]


@dataclass
class EvalReport:
    eval: str
    environment: str
    deployment: str
    digest: str
    dataset: str
    cases: int
    repeat: int
    min_pass_rate: float
    min_samples: int
    #: The eval's own digest (dataset, repeat, thresholds) and this run's id.
    eval_digest: str = ""
    eval_run: str = ""
    advisory: bool = False
    #: With a baseline: what it ran and measured (`_baseline`).
    baseline: dict[str, Any] | None = None
    calls: int = 0
    passed: int = 0
    #: Of the calls ended, in the deployment's currency; None when unknown.
    cost: float | None = None
    #: How long the calls took, from the first one's start to the last one's end.
    seconds: float | None = None
    outcome: EvalOutcome = "passed"
    reason: str = ""
    executions: list[str] = field(default_factory=list)

    @property
    def pass_rate(self) -> float | None:
        return None if not self.calls else self.passed / self.calls

    @property
    def exit_code(self) -> int:
        return {"passed": EXIT_OK, "inconclusive": EXIT_BLOCKED}.get(self.outcome, EXIT_ERROR)

    def document(self) -> dict[str, Any]:
        return {
            "eval": self.eval,
            "environment": self.environment,
            "deployment": self.deployment,
            "digest": self.digest,
            "dataset": self.dataset,
            "cases": self.cases,
            "repeat": self.repeat,
            "calls": self.calls,
            "passed": self.passed,
            "passRate": self.pass_rate,
            "cost": self.cost,
            "seconds": self.seconds,
            "minPassRate": self.min_pass_rate,
            "minSamples": self.min_samples,
            "evalDigest": self.eval_digest,
            "evalRun": self.eval_run,
            "advisory": self.advisory,
            "baseline": self.baseline,
            "outcome": self.outcome,
            "reason": self.reason,
            "executions": list(self.executions),
        }


def _clock(now: datetime | None) -> Callable[[], datetime]:
    def clock() -> datetime:
        return now if now is not None else datetime.now(UTC)

    return clock


def evaluate(
    session: Session,
    name: str,
    environment: str,
    *,
    now: datetime | None = None,
    for_pull_request: bool = False,
) -> EvalReport:
    """Run the eval; `for_pull_request` (a comment to post, a `--pr`) makes it advisory,
    as a CI pull request event does."""
    repo = session.repo
    loaded = session.load(repo.head())
    entry = loaded.desired.manifests.evals.get(name)
    if entry is None:
        raise ConfigError(f"no Eval named {name!r}")
    spec = entry.model.spec
    if environment not in spec.environments:
        raise ConfigError(f"eval {name!r} is not for {environment!r}")
    data = repo.read_file_at(loaded.commit, spec.dataset)
    if data is None:
        raise ConfigError(f"dataset {spec.dataset} does not exist at {str(loaded.commit)[:12]}")
    cases = read_cases(data.decode(errors="replace"), spec.dataset)
    if spec.judge is None:
        needs_judge(cases, spec.dataset)
    key = InstanceKey(environment, "Deployment", spec.deployment)
    with ExitStack() as stack:
        store = stack.enter_context(session.open_store(read_only=True))
        register_recorded(session, store)
        record = store.applied(environment, [key]).get(key)
        if record is None:
            raise ReconcilerError(f"deployment.{key.name} is not applied in {environment!r}")
        of_record = providers_of_record(session, store)
        config = of_record.get(environment, {}).get(record.provider)
        if config is None:
            raise ReconcilerError(
                f"provider {record.provider!r} is not declared for {environment!r}"
            )
        provider = session.provider(config)
        stack.callback(provider.close)
        executions = session.open_executions()
        stack.callback(executions.close)
        reap(executions)
        doc = eval_document(spec, loaded.desired.eval_datasets[name])
        report = EvalReport(
            name,
            environment,
            key.name,
            evidence_digest_of(record.spec, config.type),
            spec.dataset,
            len(cases),
            spec.repeat,
            spec.min_pass_rate,
            spec.min_samples,
            eval_digest=eval_digest(doc),
            # run for a pull request, the eval and its cases are the change's: shown, and
            # recorded as advisory, never counted as evidence by the promotion gate
            advisory=for_pull_request or ci.detect(session.settings.env).pull_request is not None,
        )
        if spec.max_cost is not None and price(record.spec) is None:
            raise ConfigError(
                f"eval {name!r}: maxCost needs a price, and deployment.{key.name} declares "
                f"no `pricing` in {environment!r} (its cost would be unknown): declare "
                "its pricing, or drop maxCost"
            )

        if spec.baseline is not None:
            report.baseline = _baseline(store, executions, of_record, spec, name, report)
        grader = (
            None if spec.judge is None else _judge(session, store, of_record, spec, environment)
        )
        if grader is not None:
            stack.callback(grader.provider.close)
            if spec.max_cost is not None and price(grader.record.spec) is None:
                raise ConfigError(
                    f"eval {name!r}: maxCost needs a price, and its judge "
                    f"deployment.{grader.record.name} declares no `pricing` in "
                    f"{environment!r} (its cost would be unknown): declare its pricing, "
                    "or drop maxCost"
                )
        report.eval_run = new_id(_clock(now)())
        planned = len(cases) * spec.repeat
        judge_costs: list[float | None] = []
        failures: list[str] = []  # each failed expectation, with its measured value

        def grade(case: Case, answered: Execution) -> Outcome:
            """The judge's grade of one answer, its call recorded (outside the run's
            evidence: no eval run) and its cost added to the report."""
            assert grader is not None and spec.judge is not None and case.expect.judge
            if answered.status != "completed":
                return Outcome("judge", case.expect.judge, "no answer", False)
            at = _clock(now)()
            ex = Execution(new_id(at), environment, grader.record.name, "eval", "pending", at)
            ex.holder, ex.check, ex.digest = Holder.me(), name, spec.judge.digest
            verdict = execute(
                executions, ex, grader.provider, grader.record,
                {"question": as_text(case.input), "answer": answered.result or "",
                 "criteria": case.expect.judge},
                limits=lim, clock=_clock(now),
            )  # fmt: skip
            judge_costs.append(spent(verdict))
            return graded(case.expect.judge, verdict, spec.judge.pass_)

        def call(case: Case) -> Execution:
            at = _clock(now)()
            ex = Execution(new_id(at), environment, key.name, "eval", "pending", at)
            ex.holder = Holder.me()
            ex.check, ex.digest = name, report.digest
            ex.eval_run, ex.eval_digest, ex.planned = report.eval_run, report.eval_digest, planned
            ex.advisory, ex.baseline = report.advisory, report.baseline
            done = execute(
                executions, ex, provider, record, case.input, limits=lim, clock=_clock(now)
            )
            outcomes = judge(case.expect, done)
            if case.expect.judge is not None:
                outcomes.append(grade(case, done))
            done.passed = all(o.ok for o in outcomes)
            failures.extend(f"{as_text(case.input)}: {o.line()}" for o in outcomes if not o.ok)
            done.expectations = [o.document() for o in outcomes]
            executions.transition(done, (done.status,))
            return done

        lim = limits(session)
        budget = Budget(spec.max_calls, spec.max_cost, spec.max_seconds)
        started = time.monotonic()
        tally = run_cases(
            cases,
            spec.repeat,
            call,
            parallelism=spec.parallelism,
            budget=budget,
            also_spent=lambda: _sum(list(judge_costs)),
        )
        report.seconds = round(time.monotonic() - started, 3)
        report.calls, report.passed, report.cost = tally.calls, tally.passed, tally.cost
        judged = _sum(judge_costs)  # what grading cost is spent too (unknown stays unknown)
        report.cost = None if report.cost is None or judged is None else report.cost + judged
        report.executions = tally.executions
        if tally.stopped is not None:
            report.outcome, report.reason = "stopped", tally.stopped
        else:
            _judge_run(report, spec, doc, key.name)
        if not report.advisory:
            _tell(session, store, executions, report, failures, spec)
    return report


def _judge_run(report: EvalReport, spec: EvalSpec, doc: dict[str, Any], deployment: str) -> None:
    """The outcome of a run that ran to its end: the sample, the bar, the baseline."""
    name = report.eval
    rate = report.pass_rate
    if report.calls < spec.min_samples:
        report.outcome = "inconclusive"
        report.reason = f"{report.calls} sample(s), fewer than minSamples {spec.min_samples}"
    elif rate is not None and rate >= spec.min_pass_rate:
        report.reason = f"pass rate {rate:.3f} ≥ {spec.min_pass_rate}"
        behind = baseline_problem(doc.get("baseline"), report.baseline, rate, name)
        if behind is not None:
            unmeasured = report.baseline is not None and report.baseline.get("rate") is None
            report.outcome = "inconclusive" if unmeasured else "failed"
            report.reason = f"deployment.{deployment} {behind}"
    else:
        report.outcome = "failed"
        report.reason = f"pass rate {rate or 0:.3f} < {spec.min_pass_rate}"


def _tell(
    session: Session,
    store: StateStore,
    executions: ExecutionStore,
    report: EvalReport,
    failures: list[str],
    spec: EvalSpec,
) -> None:
    """`eval_failed` for a run that did not pass, `eval_recovered` for a pass after one
    that did not, to the targets of the environment's policy of record (a change cannot
    choose who hears of it), for those that listen."""
    last = store.last_applied_run(report.environment)
    if last is None or last.policy is None:
        return
    targets = Policy.from_document(last.policy, f"run {last.id}").spec.notify
    passed = report.outcome == "passed"
    if not targets or (passed and _passed_before(executions, report, spec) is not False):
        return
    notifier = Notifier(session.settings.env, session.redactor)
    try:
        notifier.send(eval_notice(report, failures), targets)
    finally:
        notifier.close()


def _passed_before(executions: ExecutionStore, report: EvalReport, spec: EvalSpec) -> bool | None:
    """Whether the run of this eval before `report`'s (in its environment, not advisory)
    passed, by today's bar; None when there was none."""
    found = executions.find(
        Query(environments=(report.environment,), deployments=(report.deployment,), limit=None)
    )
    runs: dict[str, list[Execution]] = {}
    for e in found:
        mine = e.trigger == "eval" and e.check == report.eval and not e.advisory
        if mine and e.eval_run and e.eval_run != report.eval_run:
            runs.setdefault(e.eval_run, []).append(e)
    if not runs:
        return None
    xs = runs[max(runs)]
    judged = [e for e in xs if e.passed is not None]
    if not judged or len(judged) < (xs[0].planned or 0) or len(judged) < spec.min_samples:
        return False
    return sum(1 for e in judged if e.passed) / len(judged) >= spec.min_pass_rate


def _baseline(
    store: StateStore,
    executions: ExecutionStore,
    of_record: Providers,
    spec: EvalSpec,
    name: str,
    report: EvalReport,
) -> dict[str, Any]:
    """What the baseline environment runs now (from recorded state) and the pass rate of
    this eval's latest run on it (None: nothing applied there, or never measured)."""
    assert spec.baseline is not None
    env = spec.baseline.environment
    key = InstanceKey(env, "Deployment", spec.deployment)
    record = store.applied(env, [key]).get(key)
    if record is None:
        return {"environment": env, "digest": None, "rate": None}
    config = of_record.get(env, {}).get(record.provider)
    digest = evidence_digest_of(record.spec, config.type if config else record.provider)
    if digest == report.digest:  # the baseline runs what is measured: nothing to trail
        return {"environment": env, "digest": digest, "rate": None, "same": True}
    rate = baseline_of(executions, env, name, spec.deployment, report.eval_digest, digest)
    return {"environment": env, "digest": digest, "rate": rate}


@dataclass
class _Grader:
    record: AppliedRecord
    provider: Provider


def _judge(
    session: Session,
    store: StateStore,
    of_record: Providers,
    spec: EvalSpec,
    environment: str,
) -> _Grader:
    """The eval's judge as applied where the eval runs, exactly as pinned: a judge that
    changed (prompt, model, options, provider kind) grades nothing until the pin moves
    with it, so an eval's digest always says which judge graded it."""
    assert spec.judge is not None
    key = InstanceKey(environment, "Deployment", spec.judge.deployment)
    record = store.applied(environment, [key]).get(key)
    if record is None:
        raise ReconcilerError(f"the judge deployment.{key.name} is not applied in {environment!r}")
    config = of_record.get(environment, {}).get(record.provider)
    if config is None:
        raise ReconcilerError(f"provider {record.provider!r} is not declared for {environment!r}")
    digest = evidence_digest_of(record.spec, config.type)
    if digest != spec.judge.digest:
        raise ConfigError(
            f"the judge deployment.{key.name} runs {digest} in {environment!r}, but the "
            f"eval pins {spec.judge.digest}: a changed judge is a changed eval, so move "
            "the pin with it"
        )
    return _Grader(record, session.provider(config))


def _sum(costs: list[float | None]) -> float | None:
    total: float | None = 0.0
    for c in costs:
        total = None if total is None or c is None else total + c
    return total
