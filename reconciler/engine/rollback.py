"""`reconciler rollback`: a revert commit, reviewed and applied like any other change.

Rollback never touches providers itself: it writes the revert (optionally on a branch,
pushed, with a pull request), and `apply` of that commit records a `rollback` run. Apply
proposes the same revert when a check failed and `onFail: rollback` restored the
previous spec (`revert_after_failed_check`), so git converges on what runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.engine.forge import forge
from reconciler.errors import ConfigError, GitError, ReconcilerError
from reconciler.gate.facts import DEPLOY_BRANCH_VAR
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
    lines = _reverted_lines(repo, store, reverted)
    lines += ["", "Made by `reconciler rollback`; applying it records a `rollback` run."]
    return "\n".join(lines) + "\n"


def _reverted_lines(repo: ManifestRepo, store: StateStore, reverted: Sequence[str]) -> list[str]:
    lines = ["Rolls back these commits (newest first):", ""]
    for sha in reverted:
        lines.append(f"- `{sha[:12]}` {repo.subject(sha)}")
        for run in store.runs_for_commit(sha):
            lines.append(
                f"  - run `{run.id}` in **{run.environment}** ({run.outcome}, "
                f"{run.started_at.isoformat(timespec='seconds')})"
            )
    return lines


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


# -- after a check failed and `onFail: rollback` restored the previous spec ---------------


@dataclass
class RevertProposal:
    """The revert that makes git say what a rolled-back environment runs again: a
    pull request when apply ran in CI on the deploy branch with a forge, otherwise the
    command that opens it (`reason` says why none was opened)."""

    environment: str
    #: The commits reverted (the ones that introduced what failed), newest first.
    reverted: list[str]
    failures: list[str]
    branch: str
    command: str
    commit: str | None = None
    pull_request: int | None = None
    pull_request_url: str | None = None
    reason: str | None = None

    def document(self) -> dict[str, object]:
        return {
            "environment": self.environment,
            "reverted": self.reverted,
            "branch": self.branch,
            "commit": self.commit,
            "pullRequest": self.pull_request,
            "pullRequestUrl": self.pull_request_url,
            "reason": self.reason,
            "next": None if self.pull_request is not None else self.command,
        }


def introduced_by(
    repo: ManifestRepo, store: StateStore, environment: str, commit: str, paths: Sequence[str]
) -> list[str]:
    """The first-parent commits after the environment's last applied commit, up to
    `commit`, that touch a file apply reads (newest first): what the failed run brought.
    With no applied commit to stop at, `commit` alone."""
    last = store.last_applied_run(environment)
    stop = last.commit if last is not None else None
    if stop is None or stop == commit or not repo.is_ancestor(stop, commit):
        return [commit]
    # what `stop` reaches was applied already, whichever parent brought it
    found = [
        sha
        for sha in repo.first_parent_range(stop, commit)
        if any(_under(p, paths) for p in repo.changed_paths(sha))
    ]
    return found or [commit]


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def revert_after_failed_check(
    session: Session,
    store: StateStore,
    environment: str,
    run_id: str | None,
    commit: str,
    paths: Sequence[str],
    failures: Sequence[str],
    *,
    open_pr: bool,
) -> RevertProposal:
    """Git still declares the spec a check failed on, so the next apply would apply it
    again: propose its revert (the one `reconciler rollback` builds, `Rollback-Of:`
    trailers included). With `open_pr` (apply in CI) and a forge, on the deploy branch,
    push it on a branch of its own and open the pull request; any other case, or a
    failure on the way, says what to run. Never raises: the run's outcome stands."""
    repo = session.repo
    try:
        reverted = introduced_by(repo, store, environment, commit, paths)
    except ReconcilerError as e:  # the state or git unreadable: say what to run by hand
        reverted = [commit]
        why: str | None = f"the commits to revert could not be read: {e.message}"
    else:
        why = None
    branch = f"reconciler/revert-{environment}-{reverted[0][:12]}"
    command = (
        f"reconciler rollback {' '.join(s[:12] for s in reverted)} --branch {branch} --open-pr"
    )
    out = RevertProposal(environment, reverted, list(failures), branch, command)
    if why is not None:
        out.reason = why
        return out
    if not open_pr:
        out.reason = "not in CI on the deploy branch (or --no-revert-pr)"
        return out
    try:
        source = forge(session, "a revert pull request")
    except ConfigError as e:
        out.reason = e.message
        return out
    try:
        deploy = session.settings.env.get(DEPLOY_BRANCH_VAR) or source.default_branch()
        here = _ci_branch(session)
        if here != deploy:
            out.reason = f"apply ran on {here or 'a detached HEAD'}, not the deploy branch {deploy}"
            return out
        out.commit = repo.revert(reverted, branch=branch)
        repo.push(branch)
        body = session.redactor.redact(_revert_body(repo, store, out, run_id))
        out.pull_request, out.pull_request_url = source.open_pull_request(
            branch, deploy, repo.subject(out.commit), body
        )
    except ReconcilerError as e:
        out.reason = f"the revert pull request was not opened: {e.message}"
    finally:
        source.close()
    return out


def _ci_branch(session: Session) -> str | None:
    """The branch the CI job runs on (a push's, not a pull request's), else the
    checkout's."""
    env = session.settings.env
    named = env.get("GITHUB_REF_NAME") if env.get("GITHUB_REF_TYPE", "branch") == "branch" else None
    named = named or env.get("CI_COMMIT_BRANCH")
    if named:
        return named
    repo = session.repo.repo
    return None if repo.head.is_detached else repo.active_branch.name


def _revert_body(
    repo: ManifestRepo, store: StateStore, proposal: RevertProposal, run_id: str | None
) -> str:
    lines = [
        f"A check failed after apply in **{proposal.environment}**"
        + (f" (run `{run_id}`)" if run_id else "")
        + " and `onFail: rollback` restored the previous spec. Git still declares the "
        "failed change, so the next apply would apply it again: this reverts it.",
        "",
        "What failed, with the values measured:",
        "",
        *(f"- {line}" for line in proposal.failures),
        "",
        *_reverted_lines(repo, store, proposal.reverted),
        "",
        f"Opened by `reconciler apply` (the revert `reconciler rollback` builds). Merged, git "
        f"declares what {proposal.environment} runs again: its apply there has nothing to change.",
    ]
    return "\n".join(lines) + "\n"
