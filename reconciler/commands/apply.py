"""`reconciler apply` (and `apply --heal`): the command line's options → one
`ApplyRequest` → the engine's report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler import ci
from reconciler.config import with_command_flags
from reconciler.engine import apply as engine
from reconciler.engine.apply import ApplyReport, ApplyRequest, Watchers
from reconciler.engine.drift import HealReport, heal
from reconciler.session import Session


@dataclass(frozen=True)
class ApplyOptions:
    """`reconciler apply`'s flags, as given."""

    environments: Sequence[str] = ()
    plan_file: Path | None = None
    commit: str | None = None
    allow_delete: bool = False
    rollback_on_failure: bool = False
    break_lock: bool = False
    parallelism: int | None = None
    override_window: bool = False
    pull_request: int | None = None
    run_timeout: float | None = None
    #: In CI on the deploy branch: open the revert PR after a check's rollback.
    revert_pr: bool = True


def apply(session: Session, opts: ApplyOptions, watchers: Watchers) -> ApplyReport:
    """Apply what the options name; the CI event fills in the commit (unless a plan file
    names one) and the pull request hint."""
    settings = with_command_flags(
        session.settings, parallelism=opts.parallelism, run_timeout=opts.run_timeout
    )
    ctx = ci.detect(settings.env)
    request = ApplyRequest(
        environments=tuple(opts.environments),
        plan_file=opts.plan_file,
        commit=opts.commit or (ctx.commit if opts.plan_file is None else None),
        allow_delete=opts.allow_delete,
        rollback_on_failure=opts.rollback_on_failure,
        break_lock=opts.break_lock,
        override_window=opts.override_window,
        pull_request=opts.pull_request or ctx.pull_request,
        watchers=watchers,
        # a push's job (not a pull request's): the one whose apply rolls back
        revert_pr=opts.revert_pr and ctx.commit is not None and ctx.pull_request is None,
    )
    return engine.apply(session.with_settings(settings), request)


def heal_drift(session: Session, opts: ApplyOptions) -> HealReport:
    """`apply --heal`: put drifted instances back to their recorded specs."""
    settings = with_command_flags(session.settings, parallelism=opts.parallelism)
    return heal(session.with_settings(settings), opts.environments, break_lock=opts.break_lock)
