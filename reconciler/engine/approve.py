"""`reconciler approve`: record a reviewer's approval of a pull request in the
approvals file (`approvals.source: file`, docs/approvals-file.md), with the facts a
forge would give filled in from git: the head and merge commits (full shas), every
commit of the pull request with its author's and committer's emails, and the time.

The file stays where the gate trusts it: outside the manifests repo, named by
--approvals-file or RECONCILER_APPROVALS_FILE. Whoever can run this command can
approve: keep the file out of reach of the people it approves, as with any source.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.config import ApprovalsConfig
from reconciler.engine.overview import DEPLOY_BRANCH_VAR
from reconciler.errors import ConfigError, GitError
from reconciler.forge.file import FORMAT_VERSION, FileSource
from reconciler.session import Session


@dataclass(frozen=True)
class ApproveOptions:
    pull_request: int
    reviewer: str
    #: The commit the pull request was merged as (default: HEAD).
    merge: str | None = None
    #: The pull request author's login (default: the head commit's author name).
    author: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class ApproveReport:
    path: Path
    pull_request: int
    reviewer: str
    author: str
    head_sha: str
    merge_commit_sha: str
    commits: int
    #: True when the pull request was already in the file (its review was replaced).
    updated: bool


def approve(
    session: Session, opts: ApproveOptions, *, now: datetime | None = None
) -> ApproveReport:
    path = _approvals_path(session)
    repo = session.repo.repo
    try:
        merge = repo.commit(opts.merge or "HEAD")
    except Exception:  # GitPython raises several kinds for an unknown name
        raise GitError(
            f"unknown commit {opts.merge or 'HEAD'!r} in {session.settings.repo}"
        ) from None
    if len(merge.parents) == 2:  # a merge: the pull request is its second parent's line
        head = merge.parents[1]
        commits = list(repo.iter_commits(f"{merge.parents[0].hexsha}..{head.hexsha}"))
        commits.reverse()
    else:  # fast-forward or squash: the commit itself is the pull request
        head, commits = merge, [merge]
    author = opts.author or head.author.name
    if not author:
        raise ConfigError("the head commit has no author name: pass --author LOGIN")
    if opts.reviewer.casefold() == author.casefold():
        raise ConfigError(
            f"{opts.reviewer} wrote this pull request: an author's approval never counts",
            details="ask someone else to review it and run `reconciler approve` as them",
        )
    doc = _read(path)
    deploy = str(doc.get("deployBranch") or session.settings.env.get(DEPLOY_BRANCH_VAR) or "main")
    prs: list[dict[str, Any]] = doc.setdefault("pullRequests", [])
    existing = next((p for p in prs if p.get("number") == opts.pull_request), None)
    review = {
        "user": opts.reviewer,
        "state": "APPROVED",
        "commitId": head.hexsha,
        "submittedAt": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "writeAccess": True,
    }
    reviews = [r for r in (existing or {}).get("reviews", []) if r.get("user") != opts.reviewer]
    entry = {
        "number": opts.pull_request,
        "state": "merged",
        "headSha": head.hexsha,
        "mergeCommitSha": merge.hexsha,
        "author": author,
        "title": opts.title or (existing or {}).get("title") or head.summary,
        "baseRef": deploy,
        "commits": [_commit(c, author, head.author.email) for c in commits],
        "commitsComplete": True,
        "reviews": [*reviews, review],
    }
    if existing is not None:
        prs[prs.index(existing)] = entry
    else:
        prs.append(entry)
    _write_checked(path, doc)
    return ApproveReport(
        path,
        opts.pull_request,
        opts.reviewer,
        author,
        head.hexsha,
        merge.hexsha,
        len(commits),
        existing is not None,
    )


def _approvals_path(session: Session) -> Path:
    """The file the gate would read: refused inside the repo, as the gate refuses it."""
    source = session.approval_source(ApprovalsConfig(source="file"))
    assert isinstance(source, FileSource)
    return source.path


def _commit(c: Any, login: str, login_email: str | None) -> dict[str, Any]:
    """A commit's facts; the author's login is known only for the pull request's author
    (by email): anyone else is named by email, and the gate decides what it knows."""

    def who(actor: Any) -> tuple[str | None, str | None]:
        email = actor.email or None
        same = email is not None and login_email is not None and email == login_email
        return (login if same else None), email

    author, author_email = who(c.author)
    committer, committer_email = who(c.committer)
    return {
        "sha": c.hexsha,
        "author": author,
        "authorEmail": author_email,
        "committer": committer,
        "committerEmail": committer_email,
    }


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"version": FORMAT_VERSION, "pullRequests": []}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"approvals file {path}: cannot read it as JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"approvals file {path}: expected a JSON object")
    return doc


def _write_checked(path: Path, doc: dict[str, Any]) -> None:
    """Write next to `path` and check it as the gate will read it before replacing
    `path`: a bad file is never left in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".approvals-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        FileSource(tmp).pull_requests_for_commit(doc["pullRequests"][-1]["headSha"])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
