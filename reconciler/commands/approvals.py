"""`reconciler approvals`: the approval verdict for each environment a change touches,
optionally posted as the `reconciler/approvals` commit status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from reconciler import ci
from reconciler.commands.apply import run_context
from reconciler.commands.context import open_store
from reconciler.commands.forge import forge
from reconciler.commands.plan import build_plan
from reconciler.config import Settings
from reconciler.errors import EXIT_BLOCKED, EXIT_OK, ConfigError
from reconciler.forge import make_source
from reconciler.gate import Gate, GateResult

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
    settings: Settings,
    *,
    commit: str | None,
    pull_request: int | None,
    environments: Sequence[str] = (),
    now: datetime | None = None,
) -> ApprovalsReport:
    """Judge approvals (not windows: those apply when it is applied) per environment."""
    ctx = ci.detect(settings.env)
    pull_request = pull_request or ctx.pull_request
    with open_store(settings, read_only=True) as store:
        loaded, plan, secrets = build_plan(
            settings, store, ref=commit or ctx.commit, environments=environments
        )
        gate = Gate(
            settings=settings,
            store=store,
            target=loaded,
            source_for=lambda approvals: make_source(replace(settings, approvals=approvals)),
            now=now or datetime.now(UTC),
            mode="preview",
            pull_request=pull_request,
            reverts_exactly=run_context(settings, loaded).trigger == "rollback",
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


def post_status(settings: Settings, report: ApprovalsReport, description: str) -> PostedStatus:
    """Set `reconciler/approvals` on the commit reviewers see (the PR head)."""
    ctx = ci.detect(settings.env)
    heads = (g.verdict.head_sha for g in report.verdicts.values() if g.verdict)
    sha = ctx.head_sha or next((h for h in heads if h), None) or report.commit
    if sha is None:
        raise ConfigError("--status needs a commit: run in a git repo or pass --commit")
    state: StatusState = "success" if report.passed else "failure"
    source = forge(settings, "--status")
    try:
        source.set_status(sha, state, description)
    finally:
        source.close()
    report.posted = PostedStatus(sha, state, description)
    return report.posted
