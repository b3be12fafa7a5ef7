"""Approvals from pull-request metadata: policy, forge facts, the gate's verdict.

Usage by the gate:

    source = make_source(settings.approvals.source, repository=..., env=settings.env)
    facts = source.pull_request_for_commit(sha)          # None: a direct push
    verdict = evaluate(policy, facts, risk=..., is_rollback=..., is_member=source.membership)

Any `ApprovalSourceError` means the forge could not be asked: fail closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from reconciler.approvals._http import DEFAULT_MAX_RETRIES, DEFAULT_MAX_WAIT, DEFAULT_TIMEOUT
from reconciler.approvals.evaluate import IsMember, Verdict, evaluate
from reconciler.approvals.facts import CommitFacts, PullRequestFacts, Review
from reconciler.approvals.policy import ApprovalPolicy, RollbackPolicy
from reconciler.errors import ConfigError

__all__ = [
    "ApprovalPolicy",
    "ApprovalSource",
    "CommitFacts",
    "ForgeSource",
    "IsMember",
    "PullRequestFacts",
    "Review",
    "RollbackPolicy",
    "Verdict",
    "evaluate",
    "make_source",
]

PLAN_COMMENT_MARKER = "<!-- reconciler:plan -->"


@runtime_checkable
class ApprovalSource(Protocol):
    """What the gate reads: a commit's pull request, its facts, team membership."""

    kind: str

    def pull_request_for_commit(self, sha: str) -> PullRequestFacts | None: ...

    def pull_request(self, number: int) -> PullRequestFacts: ...

    def membership(self, org: str, team: str, user: str) -> str:
        """ "active", "pending" or "none"."""
        ...

    def is_member(self, org: str, team: str, user: str) -> bool: ...

    def close(self) -> None: ...


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

    def upsert_comment(self, pr_number: int, body: str, marker: str) -> int: ...

    def open_pull_request(self, head: str, base: str, title: str, body: str) -> tuple[int, str]: ...


def make_source(
    kind: str,
    *,
    repository: str | None,
    env: Mapping[str, str],
    file: str | Path | None = None,
    base_dir: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_retries: int = DEFAULT_MAX_RETRIES,
    max_wait: float = DEFAULT_MAX_WAIT,
) -> ApprovalSource:
    """The source `kind` (github, gitlab, file), configured from CI variables.

    CI variables win over `repository`/`file` (from reconciler.yaml), as everywhere in
    the settings. A relative file path is taken from `base_dir` (the manifests repo).
    """
    if kind == "github":
        from reconciler.approvals.github import DEFAULT_API_URL, GitHubSource

        token = env.get("GITHUB_TOKEN") or env.get("GH_TOKEN")
        repo = env.get("GITHUB_REPOSITORY") or repository
        missing = [
            what
            for what, value in (
                ("GITHUB_TOKEN (a token that can read pull requests)", token),
                ("GITHUB_REPOSITORY or approvals.repository in reconciler.yaml", repo),
            )
            if not value
        ]
        _require(missing, "github")
        assert token is not None and repo is not None
        return GitHubSource(
            env.get("GITHUB_API_URL") or DEFAULT_API_URL,
            token,
            repo,
            timeout=timeout,
            max_retries=max_retries,
            max_wait=max_wait,
        )
    if kind == "gitlab":
        from reconciler.approvals.gitlab import DEFAULT_API_URL as GITLAB_API_URL
        from reconciler.approvals.gitlab import GitLabSource

        token = env.get("GITLAB_TOKEN")
        project = env.get("CI_PROJECT_ID") or repository
        missing = []
        if not token:
            missing.append(
                "GITLAB_TOKEN (a project access token with the api scope; "
                "CI_JOB_TOKEN cannot read merge requests)"
            )
        if not project:
            missing.append("CI_PROJECT_ID or approvals.repository in reconciler.yaml")
        _require(missing, "gitlab")
        assert token is not None and project is not None
        return GitLabSource(
            env.get("CI_API_V4_URL") or GITLAB_API_URL,
            token,
            project,
            timeout=timeout,
            max_retries=max_retries,
            max_wait=max_wait,
        )
    if kind == "file":
        from reconciler.approvals.file import FileSource

        path = env.get("RECONCILER_APPROVALS_FILE") or (str(file) if file else None)
        _require(
            [] if path else ["RECONCILER_APPROVALS_FILE or approvals.file in reconciler.yaml"],
            "file",
        )
        assert path is not None
        p = Path(path)
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        return FileSource(p)
    raise ConfigError(
        f"approvals source {kind!r} cannot be asked for approvals",
        details="set approvals.source in reconciler.yaml to github, gitlab or file",
    )


def _require(missing: list[str], kind: str) -> None:
    if missing:
        raise ConfigError(
            f"approvals source {kind!r} is not configured: missing " + "; ".join(missing)
        )
