"""`reconciler approvals`: the approval verdict for each environment a change touches,
optionally posted as the `reconciler/approvals` commit status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from reconciler import ci
from reconciler.engine.apply import run_context
from reconciler.engine.context import open_gate
from reconciler.engine.forge import forge
from reconciler.engine.plan import build_plan
from reconciler.errors import EXIT_BLOCKED, EXIT_OK, ConfigError
from reconciler.gate import GateResult
from reconciler.session import Session

StatusState = Literal["success", "failure"]


@dataclass(frozen=True)
class PostedStatus:
    sha: str
    state: StatusState
    description: str


@dataclass
class ApprovalsReport:
    commit: str | None
    pull_request: int | None
    verdicts: dict[str, GateResult] = field(default_factory=dict)
    #: The commit whose status was set (`--status`), if it was.
    posted: PostedStatus | None = None

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.verdicts.values())

    @property
    def blocked(self) -> list[str]:
        return [e for e, g in self.verdicts.items() if not g.passed]

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_BLOCKED


def judge(
    session: Session,
    *,
    commit: str | None,
    pull_request: int | None,
    environments: Sequence[str] = (),
    now: datetime | None = None,
) -> ApprovalsReport:
    """Judge approvals (not windows: those apply when it is applied) per environment."""
    ctx = ci.detect(session.settings.env)
    pull_request = pull_request or ctx.pull_request
    with session.open_store(read_only=True) as store:
        loaded, plan, secrets = build_plan(
            session, store, ref=commit or ctx.commit, environments=environments
        )
        gate = open_gate(
            session,
            store,
            loaded,
            now=now or session.clock.now(),
            mode="preview",
            pull_request=pull_request,
            reverts_exactly=run_context(session, loaded).trigger == "rollback",
            secret_env=secrets,
        )
        report = ApprovalsReport(plan.commit, pull_request)
        try:
            for ep in plan.environments:
                if ep.changes:
                    report.verdicts[ep.environment] = gate.check_approvals(ep)
        finally:
            gate.close()
    return report


def post_status(session: Session, report: ApprovalsReport, description: str) -> PostedStatus:
    """Set `reconciler/approvals` on the commit reviewers see (the PR head)."""
    ctx = ci.detect(session.settings.env)
    heads = (g.verdict.head_sha for g in report.verdicts.values() if g.verdict)
    sha = ctx.head_sha or next((h for h in heads if h), None) or report.commit
    if sha is None:
        raise ConfigError("--status needs a commit: run in a git repo or pass --commit")
    state: StatusState = "success" if report.passed else "failure"
    source = forge(session, "--status")
    try:
        source.set_status(sha, state, description)
    finally:
        source.close()
    report.posted = PostedStatus(sha, state, description)
    return report.posted
