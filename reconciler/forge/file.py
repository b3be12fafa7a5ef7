"""Approval facts from a JSON document, for other forges and air-gapped use.

The format is documented in docs/approvals-file.md. Whatever produces the file is
trusted the way a forge API is: keep it out of reach of the people it approves.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError

from reconciler._strict import StrictModel
from reconciler.approvals.facts import CommitFacts, PullRequestFacts, Review
from reconciler.errors import ApprovalSourceError

FORMAT_VERSION = 1
_MIN_PREFIX = 7


class _Commit(StrictModel):
    sha: str
    author: str | None = None
    author_email: str | None = None
    committer: str | None = None
    committer_email: str | None = None
    co_author_emails: list[str] = Field(default_factory=list)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("a time needs its UTC offset (e.g. 2026-03-02T10:00:00Z)")
    return value


class _Review(StrictModel):
    user: str
    state: Literal["APPROVED", "CHANGES_REQUESTED", "DISMISSED", "COMMENTED", "PENDING"]
    commit_id: str | None = None
    submitted_at: Annotated[datetime | None, AfterValidator(_aware)] = None
    emails: list[str] = Field(default_factory=list)
    #: The reviewer can push to the repository (what `approvers: []` requires).
    write_access: bool | None = None
    bot: bool = False


class _PullRequest(StrictModel):
    number: int
    state: Literal["open", "closed", "merged"]
    head_sha: str
    author: str | None = None
    url: str = ""
    title: str = ""
    base_ref: str = ""
    merge_commit_sha: str | None = None
    labels: list[str] = Field(default_factory=list)
    commits: list[_Commit] = Field(default_factory=list)
    commits_complete: bool = True
    reviews: list[_Review] = Field(default_factory=list)


class _Team(StrictModel):
    active: list[str] = Field(default_factory=list)
    pending: list[str] = Field(default_factory=list)


class _Document(StrictModel):
    version: Literal[1] = 1
    #: The deploy branch (what a forge calls the default branch).
    deploy_branch: str = "main"
    commits: dict[str, int | None] = Field(default_factory=dict)
    pull_requests: list[_PullRequest] = Field(default_factory=list)
    teams: dict[str, list[str] | _Team] = Field(default_factory=dict)

    def contradictions(self) -> list[str]:
        """Facts that cannot all be true: the gate refuses the file rather than pick."""
        problems = []
        numbers = [p.number for p in self.pull_requests]
        problems += [f"pull request #{n} appears twice" for n in sorted(_twice(numbers))]
        team_names = [name.removeprefix("@").casefold() for name in self.teams]
        problems += [f"team {t!r} is listed twice" for t in sorted(_twice(team_names))]
        for name, members in self.teams.items():
            if isinstance(members, _Team):
                both = {u.casefold() for u in members.active} & {
                    u.casefold() for u in members.pending
                }
                problems += [
                    f"{u!r} is both active and pending in team {name!r}" for u in sorted(both)
                ]
        keys = [k.casefold() for k in self.commits]
        problems += [f"commit {k} is mapped twice" for k in sorted(_twice(keys))]
        return problems


def _twice(items: list[Any]) -> set[Any]:
    seen: set[Any] = set()
    twice: set[Any] = set()
    for x in items:
        (twice if x in seen else seen).add(x)
    return twice


class FileSource:
    """Reads the document once, on first use."""

    kind = "file"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._doc: _Document | None = None

    def __repr__(self) -> str:
        return f"FileSource({str(self.path)!r})"

    def close(self) -> None:
        pass

    def _load(self) -> _Document:
        if self._doc is None:
            try:
                raw = self.path.read_bytes()
            except OSError as e:
                raise ApprovalSourceError(
                    f"approvals file {self.path}: cannot read it ({e.strerror or e})"
                ) from None
            try:
                self._doc = _Document.model_validate_json(raw)
            except ValidationError as e:
                problems = [
                    f"{'.'.join(str(p) for p in err['loc']) or '(document)'}: {err['msg']}"
                    for err in e.errors(include_url=False)
                ]
                raise ApprovalSourceError(
                    f"approvals file {self.path} is invalid "
                    f"({len(problems)} problem{'s' if len(problems) != 1 else ''})",
                    details="\n".join(problems),
                ) from None
            problems = self._doc.contradictions()
            if problems:
                raise ApprovalSourceError(
                    f"approvals file {self.path} contradicts itself: {problems[0]}",
                    details="\n".join(problems),
                )
        return self._doc

    def _find(self, number: int) -> _PullRequest | None:
        return next((p for p in self._load().pull_requests if p.number == number), None)

    def pull_request_for_commit(self, sha: str) -> PullRequestFacts | None:
        """The merged pull request `commits` maps `sha` to; else one that contains it.

        A commit mapped to `null`, or to a pull request that is not merged, has none.
        """
        doc = self._load()
        want = sha.casefold()
        mapped = [
            n
            for key, n in doc.commits.items()
            if key.casefold() == want
            or (min(len(key), len(want)) >= _MIN_PREFIX and _prefix(key.casefold(), want))
        ]
        if len(mapped) > 1:
            raise ApprovalSourceError(f"approvals file {self.path}: commit {sha} is ambiguous")
        if mapped:
            pr = self._find(mapped[0]) if mapped[0] is not None else None
            if mapped[0] is not None and pr is None:
                raise ApprovalSourceError(
                    f"approvals file {self.path}: commit {sha} maps to pull request "
                    f"#{mapped[0]}, which is not in pullRequests"
                )
            return _facts(pr) if pr is not None and pr.state == "merged" else None
        for pr in doc.pull_requests:
            shas = {pr.merge_commit_sha, pr.head_sha, *(c.sha for c in pr.commits)}
            if pr.state == "merged" and want in {s.casefold() for s in shas if s}:
                return _facts(pr)
        return None

    def pull_requests_for_commit(self, sha: str) -> list[int]:
        """Pull requests the file maps `sha` to, or whose commits, head or merge it is."""
        doc = self._load()
        want = sha.casefold()
        found = [
            n
            for key, n in doc.commits.items()
            if n is not None
            and (
                key.casefold() == want
                or (min(len(key), len(want)) >= _MIN_PREFIX and _prefix(key.casefold(), want))
            )
        ]
        for pr in doc.pull_requests:
            shas = {pr.merge_commit_sha, pr.head_sha, *(c.sha for c in pr.commits)}
            if want in {s.casefold() for s in shas if s}:
                found.append(pr.number)
        return list(dict.fromkeys(found))

    def default_branch(self) -> str:
        return self._load().deploy_branch

    def pull_request(self, number: int) -> PullRequestFacts:
        pr = self._find(number)
        if pr is None:
            raise ApprovalSourceError(f"approvals file {self.path}: no pull request #{number}")
        return _facts(pr)

    def membership(self, org: str, team: str, user: str) -> str:
        key = f"{org}/{team}".casefold()
        for name, members in self._load().teams.items():
            if name.removeprefix("@").casefold() != key:
                continue
            t = members if isinstance(members, _Team) else _Team(active=members)
            if user.casefold() in {u.casefold() for u in t.active}:
                return "active"
            if user.casefold() in {u.casefold() for u in t.pending}:
                return "pending"
        return "none"

    def is_member(self, org: str, team: str, user: str) -> bool:
        return self.membership(org, team, user) == "active"


def _prefix(a: str, b: str) -> bool:
    return a.startswith(b) or b.startswith(a)


def _facts(pr: _PullRequest) -> PullRequestFacts:
    return PullRequestFacts(
        number=pr.number,
        url=pr.url,
        title=pr.title,
        state=pr.state,
        merged=pr.state == "merged",
        author=pr.author,
        head_sha=pr.head_sha,
        base_ref=pr.base_ref,
        labels=tuple(pr.labels),
        commits=tuple(
            CommitFacts(
                sha=c.sha,
                author_login=c.author,
                author_email=c.author_email,
                committer_login=c.committer,
                committer_email=c.committer_email,
                co_author_emails=tuple(c.co_author_emails),
            )
            for c in pr.commits
        ),
        reviews=tuple(
            Review(
                user=r.user,
                state=r.state,
                commit_id=r.commit_id,
                submitted_at=r.submitted_at,
                emails=tuple(r.emails),
                bot=r.bot,
                write_access=r.write_access,
            )
            for r in pr.reviews
        ),
        merge_commit_sha=pr.merge_commit_sha,
        commits_complete=pr.commits_complete,
    )
