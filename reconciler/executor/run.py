"""One run of one environment, start to end: the lock, the plan checked against the
state serial under it, the run record begun, the changes run (`schedule.py`), a restore
or the after-apply checks, and the run finished with its outcome. Whatever goes wrong
after the run began (a state write failing, a bug), the run is finished `failed` (or
`interrupted`) with the reason before the lock is released. A lost lock is recorded,
nothing is restored (another run may hold the environment now), and it is raised."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from reconciler.errors import StateMovedError
from reconciler.instances import InstanceKey
from reconciler.log import get_logger
from reconciler.plan import EnvironmentPlan
from reconciler.providers.pool import ProviderPool
from reconciler.state.base import AppliedRecord, RunRecord, StateStore
from reconciler.vocabulary import RunOutcome

from .change import Executor
from .model import AfterApplyFn, ChangeResult, EnvironmentResult, RunContext, error_text
from .restore import restore
from .schedule import run_changes

log = get_logger("reconciler.executor")


class Run:
    """One run of one environment: the lock, the run record and its outcome."""

    def __init__(
        self,
        store: StateStore,
        run_id: str,
        context: RunContext,
        executor: Executor,
        *,
        rollback_on_failure: bool,
        break_lock: bool,
        after_apply: AfterApplyFn | None = None,
        pool: ProviderPool | None = None,
    ) -> None:
        self.after_apply = after_apply
        self.pool = pool
        self.store = store
        self.run_id = run_id
        self.context = context
        self.executor = executor
        self.rollback_on_failure = rollback_on_failure
        self.break_lock = break_lock
        self.details = dict(context.details)
        if break_lock:
            self.details["broke_lock"] = True

    def under_lock(
        self, plan: EnvironmentPlan, replan: Callable[[], EnvironmentPlan] | None
    ) -> EnvironmentResult:
        """The run's own error is what the caller sees, even when releasing the lock
        fails after it (e.g. the lock was taken over): that failure is only logged."""
        envname = plan.environment
        first: BaseException | None = None
        try:
            with self.store.lock(envname, self.run_id, break_lock=self.break_lock):
                try:
                    return self._locked(plan, replan)
                except BaseException as e:
                    first = e
                    raise
        except BaseException as e:
            if first is None or e is first:
                raise
            log.warning(
                "cannot release the lock",
                environment=envname,
                run=self.run_id,
                error=error_text(e),
            )
            raise first from None
        raise AssertionError("unreachable: the lock swallowed an exception")  # pragma: no cover

    def _locked(
        self, plan: EnvironmentPlan, replan: Callable[[], EnvironmentPlan] | None
    ) -> EnvironmentResult:
        envname = plan.environment
        current = self.store.serial(envname)
        if replan is not None:
            plan = replan()
        elif current != plan.serial:
            raise StateMovedError(
                f"state of {envname!r} moved since the plan was made (serial {plan.serial} → "
                f"{current}): run `reconciler plan` again"
            )
        if not plan.changes:
            return EnvironmentResult(envname, "noop", message="no changes")
        before: dict[InstanceKey, AppliedRecord] = {}
        if self.rollback_on_failure or self.after_apply is not None:
            # what restore puts back (after a failed change or check): read it first
            before = self.store.applied(envname, [c.key for c in plan.changes])
        self.store.begin_run(self._record(envname))
        try:
            results = run_changes(self.executor, plan, self.run_id, self.context.commit)
            failed = [r for r in results if r.outcome != "applied"]
            restored: list[ChangeResult] = []
            check_failure: str | None = None
            lost = self.executor.lock_lost
            if lost is not None:  # another run may hold the environment: put nothing back
                self.details["lock_lost"] = lost.message
            elif failed and self.rollback_on_failure:
                restored = self._restore(results, before)
            elif not failed and self.after_apply is not None and self.pool is not None:
                checked = self.after_apply(envname, self.run_id, results, self.pool)
                self.details.update(checked.details)
                if checked.failures:
                    check_failure = "checks failed: " + "; ".join(checked.failures)
                    if checked.rollback or self.rollback_on_failure:
                        restored = self._restore(results, before)
        except BaseException as e:
            self._finish_after(e)
            raise
        outcome: Literal["applied", "failed"] = "failed" if failed or check_failure else "applied"
        message = check_failure
        if failed:
            first = next((r for r in failed if r.outcome == "failed"), failed[0])
            message = f"{first.change.address}: {first.error}"
            deadline = self.executor.deadline
            if deadline is not None and deadline.passed():
                message = f"{deadline} passed; {message}"
                self.details["deadline"] = f"{deadline} passed"
        self.store.finish_run(self.run_id, outcome, self.details)
        if lost is not None:  # recorded `failed`, with the changes not started: now stop
            raise lost
        return EnvironmentResult(
            environment=envname,
            outcome=outcome,
            run_id=self.run_id,
            results=results,
            message=message,
            restored=restored,
        )

    def _restore(
        self, results: Sequence[ChangeResult], before: Mapping[InstanceKey, AppliedRecord]
    ) -> list[ChangeResult]:
        restored = restore(self.executor, results, before, self.run_id)
        self.details["rolled_back"] = [r.change.address for r in restored if r.outcome == "applied"]
        if any(r.outcome != "applied" for r in restored):
            self.details["restore_failed"] = {
                r.change.address: r.error for r in restored if r.outcome != "applied"
            }
        return restored

    def _record(self, envname: str) -> RunRecord:
        ctx = self.context
        return RunRecord(
            id=self.run_id,
            environment=envname,
            commit=ctx.commit,
            trigger=ctx.trigger,
            started_at=self.executor.clock.now(),
            finished_at=None,
            outcome="running",
            pull_request=ctx.pull_request,
            author=ctx.author,
            approvers=list(ctx.approvers),
            reverted_commits=list(ctx.reverted_commits),
            reverted_runs=list(ctx.reverted_runs),
            changes=[],
            details=self.details,
            policy=ctx.policy,
        )

    def _finish_after(self, error: BaseException) -> None:
        """End the run with `error` as its reason. If that write fails too (the state
        is what broke), log it: the original error is the one the caller must see."""
        outcome: RunOutcome = "failed" if isinstance(error, Exception) else "interrupted"
        self.details["error"] = error_text(error)
        try:
            self.store.finish_run(self.run_id, outcome, self.details)
        except Exception as e:
            log.warning("cannot record the end of the run", run=self.run_id, error=error_text(e))
