"""The forges: where approval facts are read, and where results are written back
(commit statuses, the plan comment, rollback pull requests).

`make_source(settings)` is the one way to get a source. This package's own import is
light on purpose (the markdown renderer takes `PLAN_COMMENT_MARKER` from here): the
clients, and httpx with them, load only when a source is made.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from reconciler.approvals import ApprovalSource
from reconciler.config import APPROVALS_FILE_ENV
from reconciler.errors import ConfigError
from reconciler.redaction import Register, to_backstop

if TYPE_CHECKING:
    from reconciler.config import Settings

__all__ = [
    "DEFAULT_DEADLINE",
    "FILE_ENV",
    "PLAN_COMMENT_MARKER",
    "TIMEOUT_ENV",
    "ForgeSource",
    "deadline_from",
    "make_source",
]

#: Marks the one pull-request comment holding the plan, so it is edited, not repeated.
PLAN_COMMENT_MARKER = "<!-- reconciler:plan -->"
#: Seconds one forge request may take in total (connect, send, the whole answer).
DEFAULT_DEADLINE = 30.0
#: The environment variable that overrides DEFAULT_DEADLINE.
TIMEOUT_ENV = "RECONCILER_FORGE_TIMEOUT"
#: The environment variable that names the approvals file: the only way to name it, so
#: that the change being judged (the repo) can never choose or write it.
FILE_ENV = APPROVALS_FILE_ENV


@runtime_checkable
class ForgeSource(ApprovalSource, Protocol):
    """A forge the results are written back to (GitHub, GitLab; not the file)."""

    def set_status(
        self,
        sha: str,
        state: str,
        description: str,
        context: str = ...,
        target_url: str | None = None,
    ) -> None:
        """`state`: success, failure, error or pending; description cut to 140 chars."""
        ...

    def upsert_comment(self, pr_number: int, body: str, marker: str = ...) -> int:
        """Edit the comment holding `marker` (default PLAN_COMMENT_MARKER) or create it."""
        ...

    def open_pull_request(self, head: str, base: str, title: str, body: str) -> tuple[int, str]:
        """Open a pull (merge) request, or return the open one for the same branches."""
        ...


def deadline_from(env: Mapping[str, str]) -> float:
    """The forge deadline: RECONCILER_FORGE_TIMEOUT seconds, else DEFAULT_DEADLINE."""
    raw = env.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_DEADLINE
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return seconds


def make_source(settings: Settings, register: Register = to_backstop) -> ApprovalSource | None:
    """The source `approvals.source` names, configured from CI variables; None for `none`.
    `register` learns its token: the session's redactor (`Session.approval_source`); the
    default, for library use without a session, feeds only the log backstop.

    CI variables win over `approvals.repository` in reconciler.yaml, as everywhere in
    the settings. The approvals file's path comes only from RECONCILER_APPROVALS_FILE
    and must lie outside the manifests repo.
    """
    a = settings.approvals
    env = dict(settings.env)
    if a.source == "none":
        return None
    if a.source == "github":
        from reconciler.forge.github import DEFAULT_API_URL, GitHubSource

        token = env.get("GITHUB_TOKEN") or env.get("GH_TOKEN")
        repo = env.get("GITHUB_REPOSITORY") or a.repository
        _require(
            "github",
            [
                ("GITHUB_TOKEN (a token that can read pull requests)", token),
                ("GITHUB_REPOSITORY or approvals.repository in reconciler.yaml", repo),
            ],
        )
        assert token is not None and repo is not None
        api = env.get("GITHUB_API_URL") or DEFAULT_API_URL
        return GitHubSource(
            api, token, repo, deadline=deadline_from(env), env=env, register=register
        )
    if a.source == "gitlab":
        from reconciler.forge.gitlab import DEFAULT_API_URL as GITLAB_API_URL
        from reconciler.forge.gitlab import GitLabSource

        token = env.get("GITLAB_TOKEN")
        project = env.get("CI_PROJECT_ID") or a.repository
        _require(
            "gitlab",
            [
                (
                    "GITLAB_TOKEN (a project access token with the api scope; "
                    "CI_JOB_TOKEN cannot read merge requests)",
                    token,
                ),
                ("CI_PROJECT_ID or approvals.repository in reconciler.yaml", project),
            ],
        )
        assert token is not None and project is not None
        api = env.get("CI_API_V4_URL") or GITLAB_API_URL
        return GitLabSource(
            api, token, project, deadline=deadline_from(env), env=env, register=register
        )
    from reconciler.forge.file import FileSource

    path = settings.approvals_file
    _require("file", [(f"--approvals-file or {FILE_ENV} (outside the manifests repo)", path)])
    assert path is not None
    real = Path(os.path.realpath(path))
    if real.is_relative_to(Path(os.path.realpath(settings.repo))):
        raise ConfigError(
            f"the approvals file {path} is inside the manifests repo: a change could write "
            "its own approvals there; keep it outside the repo"
        )
    return FileSource(real)


def _require(kind: str, needs: list[tuple[str, object]]) -> None:
    missing = [what for what, value in needs if not value]
    if missing:
        raise ConfigError(
            f"approvals source {kind!r} is not configured: missing " + "; ".join(missing)
        )
