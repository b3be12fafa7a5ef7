"""`reconciler rollback`: a revert commit, reviewed and applied like any other change.

Rollback never touches providers itself: it writes the revert (optionally on a branch,
pushed, with a pull request), and `apply` of that commit records a `rollback` run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.engine.forge import forge
from reconciler.errors import ConfigError, GitError
from reconciler.gitrepo import ManifestRepo
from reconciler.session import Session
from reconciler.state.base import StateStore


@dataclass
class RollbackResult:
    commit: str
    subject: str
    reverted: list[str]
    branch: str | None
    #: The branch checked out when the revert was made (the pull request's base).
    base: str | None = None
    pushed: bool = False
    pull_request: int | None = None
    pull_request_url: str | None = None


def pull_request_body(repo: ManifestRepo, store: StateStore, reverted: Sequence[str]) -> str:
    """What a reviewer of a rollback needs: each reverted commit and the runs it had."""
    lines = ["Rolls back these commits (newest first):", ""]
    for sha in reverted:
        lines.append(f"- `{sha[:12]}` {repo.subject(sha)}")
        for run in store.runs_for_commit(sha):
            lines.append(
                f"  - run `{run.id}` in **{run.environment}** ({run.outcome}, "
                f"{run.started_at.isoformat(timespec='seconds')})"
            )
    lines += ["", "Made by `reconciler rollback`; applying it records a `rollback` run."]
    return "\n".join(lines) + "\n"


def rollback(
    session: Session,
    commits: Sequence[str],
    *,
    to: str | None = None,
    branch: str | None = None,
    push: bool = False,
    open_pr: bool = False,
) -> RollbackResult:
    repo = ManifestRepo(session.settings.repo)
    if bool(commits) == bool(to):
        raise ConfigError("name the commits to roll back, or --to COMMIT (not both)")
    if open_pr and not branch:
        raise ConfigError("--open-pr needs --branch: the pull request's head")
    # fail before writing anything when the forge is not configured
    source = forge(session, "--open-pr") if open_pr else None
    try:
        result = _revert(session, repo, commits, to=to, branch=branch, push=push or open_pr)
        if source is not None and branch is not None:
            if result.base is None:
                raise GitError("HEAD is detached: cannot tell which branch the PR targets")
            with session.open_store(read_only=True) as store:
                body = pull_request_body(repo, store, result.reverted)
            number, url = source.open_pull_request(branch, result.base, result.subject, body)
            result.pull_request, result.pull_request_url = number, url
    finally:
        if source is not None:
            source.close()
    return result


def _revert(
    session: Session,
    repo: ManifestRepo,
    commits: Sequence[str],
    *,
    to: str | None,
    branch: str | None,
    push: bool,
) -> RollbackResult:
    if to is not None:
        target = repo.resolve(to)
        reverted = repo.commits_since(target, session.settings.manifest_paths)
        if not reverted:
            raise GitError(f"no commit after {target[:12]} changed the manifests: nothing to do")
    else:
        reverted = [repo.resolve(c) for c in commits]
    base = repo.repo.active_branch.name if not repo.repo.head.is_detached else None
    sha = repo.revert(reverted, branch=branch)
    result = RollbackResult(sha, repo.subject(sha), repo.reverted_commits(sha), branch, base)
    if push:
        pushed_branch = branch or base
        if pushed_branch is None:
            raise GitError("HEAD is detached: use --branch to push the rollback")
        repo.push(pushed_branch)
        result.pushed = True
    return result
