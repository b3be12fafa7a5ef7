"""Writing back to the forge: the plan comment, the approvals status, rollback PRs.

Only `github` and `gitlab` sources can be written to; anything else is a clear error
before anything is sent."""

from __future__ import annotations

from reconciler import ci
from reconciler.errors import ConfigError
from reconciler.forge import ForgeSource
from reconciler.session import Session


def forge(session: Session, what: str) -> ForgeSource:
    """The configured forge, or a ConfigError saying `what` needs one."""
    source = session.approval_source(session.settings.approvals)
    if not isinstance(source, ForgeSource):
        if source is not None:
            source.close()
        raise ConfigError(f"{what} needs approvals.source github or gitlab in reconciler.yaml")
    return source


def post_plan_comment(session: Session, body: str, marker: str, pr: int | None) -> int:
    """Create or update the one plan comment on pull request `pr` (or the CI event's)."""
    number = pr or ci.detect(session.settings.env).pull_request
    if number is None:
        raise ConfigError("--comment needs a pull request: --pr N, or run on a PR event")
    source = forge(session, "posting to a pull request")
    try:
        source.upsert_comment(number, body, marker)
    finally:
        source.close()
    return number
