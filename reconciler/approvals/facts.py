"""What a forge's API says about a pull request: the only input approvals trust.

Nothing here comes from git itself (commit messages, trailers, local refs): every
source fills these from its API's answer, so a forged commit message cannot approve.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

APPROVED = "APPROVED"
CHANGES_REQUESTED = "CHANGES_REQUESTED"
DISMISSED = "DISMISSED"
COMMENTED = "COMMENTED"
PENDING = "PENDING"
#: States that express (or withdraw) an opinion; COMMENTED and PENDING don't.
OPINIONATED = frozenset({APPROVED, CHANGES_REQUESTED, DISMISSED})
#: GitHub's `author_association` values of people who can push to the repository.
WRITERS = frozenset({"OWNER", "MEMBER", "COLLABORATOR"})

_NOREPLY = re.compile(
    r"^(?:\d+[+-])?(?P<login>[A-Za-z0-9][A-Za-z0-9._-]*)@users\.noreply\.[A-Za-z0-9.-]+$",
    re.I,
)
_CO_AUTHOR = re.compile(r"^co-authored-by:[^<\n]*<([^<>\s]+@[^<>\s]+)>\s*$", re.I | re.M)

#: The commit status / pipeline status the approval verdict is posted as.
STATUS_CONTEXT = "reconciler/approvals"
#: GitHub refuses longer status descriptions (422); GitLab shows no more.
STATUS_DESCRIPTION_MAX = 140


def status_description(text: str) -> str:
    """`text` cut to what a commit status accepts, with an ellipsis when cut."""
    if len(text) <= STATUS_DESCRIPTION_MAX:
        return text
    return text[: STATUS_DESCRIPTION_MAX - 1].rstrip() + "…"


@dataclass(frozen=True)
class Review:
    """One submitted review (GitHub) or approval (GitLab), in API order."""

    user: str
    state: str
    commit_id: str | None = None
    submitted_at: datetime | None = None
    #: Emails the forge says belong to the reviewer (GitLab public emails); used to
    #: match commits whose author has no forge login.
    emails: tuple[str, ...] = ()
    #: The forge says the reviewer is a bot (GitHub `type: Bot`, GitLab `bot: true`).
    bot: bool = False
    #: Whether the reviewer can write to the repository (GitHub `author_association`
    #: OWNER/MEMBER/COLLABORATOR, GitLab access level ≥ Developer); None: not known.
    write_access: bool | None = None

    @property
    def is_bot(self) -> bool:
        return self.bot or self.user.casefold().endswith("[bot]")


@dataclass(frozen=True)
class CommitFacts:
    """A commit of the pull request: who wrote it and who committed it."""

    sha: str
    author_login: str | None = None
    author_email: str | None = None
    committer_login: str | None = None
    committer_email: str | None = None
    #: Co-authors the forge reports (emails); only ever used to exclude approvers.
    co_author_emails: tuple[str, ...] = ()


@dataclass(frozen=True)
class PullRequestFacts:
    """A pull request (GitHub) or merge request (GitLab) as the gate sees it."""

    number: int
    url: str
    title: str
    state: str
    merged: bool
    author: str | None
    head_sha: str
    base_ref: str
    labels: tuple[str, ...] = ()
    commits: tuple[CommitFacts, ...] = ()
    reviews: tuple[Review, ...] = ()
    merge_commit_sha: str | None = None
    #: False when the API could not list every commit (GitHub stops at 250): the
    #: authors are then unknown, and the four-eyes rule cannot be checked.
    commits_complete: bool = True
    #: The forge itself refuses approvals by the MR's author and committers (GitLab's
    #: project settings): authors it cannot name for us are then no risk.
    forge_enforces_four_eyes: bool = False

    def untied_commits(self, reviewer_emails: frozenset[str] = frozenset()) -> list[str]:
        """Commits with an author, committer or co-author no forge account can be tied
        to: no login, and an email that is neither a noreply address nor one of the
        reviewers' known emails. Who wrote them is unknown, so four eyes cannot be told."""
        untied = []
        for c in self.commits:
            people = [(c.author_login, c.author_email)]
            if c.committer_login or c.committer_email:  # absent: the author committed
                people.append((c.committer_login, c.committer_email))
            people += [(None, e) for e in c.co_author_emails]
            if not all(_tied(login, email, reviewer_emails) for login, email in people):
                untied.append(c.sha)
        return untied

    def contributors(self) -> tuple[frozenset[str], frozenset[str]]:
        """(logins, emails) of everyone who authored, co-authored or committed a commit.

        Logins are lower-cased; a noreply address (`123+alice@users.noreply.github.com`)
        also yields its login.
        """
        logins: set[str] = set()
        emails: set[str] = set()
        for c in self.commits:
            for login in (c.author_login, c.committer_login):
                if login:
                    logins.add(login.casefold())
            for email in (c.author_email, c.committer_email, *c.co_author_emails):
                if email:
                    emails.add(email.casefold())
                    noreply = noreply_login(email)
                    if noreply:
                        logins.add(noreply.casefold())
        return frozenset(logins), frozenset(emails)


def _tied(login: str | None, email: str | None, known: frozenset[str]) -> bool:
    if login:
        return True
    if not email:
        return False
    return noreply_login(email) is not None or email.casefold() in known


def noreply_login(email: str) -> str | None:
    """The login a forge's noreply address stands for, if it is one."""
    m = _NOREPLY.match(email.strip())
    return m.group("login") if m else None


def co_author_emails(message: str) -> tuple[str, ...]:
    """Emails of `Co-authored-by:` trailers.

    Only ever used to exclude more approvers (a co-author approving is self-approval),
    never to count one, so reading them from the message is safe.
    """
    return tuple(_CO_AUTHOR.findall(message))
