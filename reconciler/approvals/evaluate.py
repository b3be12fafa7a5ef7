"""The approval gate's rules: a policy plus forge facts give a verdict that says why.

Pure: no network except through `is_member`, which the caller passes (a source's
`membership` or `is_member`). Anything unknown counts against the change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.approvals.facts import (
    APPROVED,
    CHANGES_REQUESTED,
    DISMISSED,
    OPINIONATED,
    PullRequestFacts,
    Review,
    status_description,
)
from reconciler.approvals.policy import ApprovalPolicy, split_approver

#: `is_member(org, team, user)`: True/"active" counts; "pending" is reported as such.
IsMember = Callable[[str, str, str], bool | str]


AUTHOR = "author of the pull request"
COMMITTER = "committed to the pull request"
AUTHORS_UNKNOWN = "commit authors unknown (the API lists only part of the commits)"
AUTHORS_UNTIED = "commit authors unknown ({commits} by someone no account is tied to)"
NOT_APPROVER = "not an approver"
BOT = "a bot (bots count only when listed by name)"
NO_WRITE_ACCESS = "no write access to the repository"
WRITE_ACCESS_UNKNOWN = "write access unknown"
MEMBERSHIP_PENDING = "team membership pending"
CHANGES_LATER = "changes requested later"
CHANGES = "requested changes"
DISMISSED_REVIEW = "review dismissed"


def _short(sha: str | None) -> str:
    return sha[:7] if sha else "unknown commit"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one environment: passed or not, and who counted."""

    passed: bool
    required: int
    approved_by: list[str]
    not_counted: list[tuple[str, str]]
    missing: int
    pull_request: int | None
    author: str | None
    risk: str = "low"
    rollback: bool = False
    head_sha: str | None = None
    url: str | None = None
    approvers: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line of at most 140 characters (a commit status description)."""
        pr = f" (#{self.pull_request})" if self.pull_request is not None else ""
        if self.pull_request is None and self.required > 0:
            text = (
                f"blocked: no pull request for this commit (direct push); "
                f"{_plural(self.required, 'approval')} required"
            )
        elif self.required == 0:
            text = f"no approvals required{pr}"
        elif self.passed:
            text = f"{len(self.approved_by)}/{self.required} approvals{pr}: " + ", ".join(
                self.approved_by
            )
        else:
            text = f"{len(self.approved_by)}/{self.required} approvals{pr}, {self.missing} missing"
            if self.approved_by:
                text += "; by " + ", ".join(self.approved_by)
            if self.not_counted:
                text += "; not counted: " + ", ".join(f"{u} ({r})" for u, r in self.not_counted)
        return status_description(text)

    def explain(self) -> list[str]:
        """Human lines: the pull request, what was required, who counted and who not."""
        lines: list[str] = []
        if self.pull_request is None:
            lines.append("No merged pull request found for this commit (a direct push).")
        else:
            by = f" by {self.author}" if self.author else ""
            head = f", head {_short(self.head_sha)}" if self.head_sha else ""
            lines.append(f"Pull request #{self.pull_request}{by}{head}.")
        which = "rollback policy" if self.rollback else f"risk {self.risk}"
        lines.append(f"Required: {_plural(self.required, 'approval')} ({which}).")
        if self.approvers:
            lines.append("Approvers: " + ", ".join(self.approvers) + ".")
        if self.approved_by:
            lines.append("Approved by: " + ", ".join(self.approved_by) + ".")
        elif self.required > 0:
            lines.append("Approved by: nobody who counts.")
        lines.extend(f"Not counted: {user}: {reason}." for user, reason in self.not_counted)
        if self.passed:
            lines.append("Passed.")
        elif self.pull_request is None:
            lines.append("Blocked: a change that needs approvals must come through a pull request.")
        else:
            lines.append(f"Blocked: {_plural(self.missing, 'more approval')} needed.")
        return lines

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for `--json` output and run records."""
        return {
            "passed": self.passed,
            "required": self.required,
            "approvedBy": list(self.approved_by),
            "notCounted": [{"user": u, "reason": r} for u, r in self.not_counted],
            "missing": self.missing,
            "pullRequest": self.pull_request,
            "author": self.author,
            "risk": self.risk,
            "rollback": self.rollback,
            "headSha": self.head_sha,
            "url": self.url,
            "summary": self.summary(),
        }


def _latest_opinions(reviews: Iterable[Review]) -> list[tuple[Review, bool]]:
    """Each reviewer's latest opinionated review, and whether they approved before it.

    Reviews are taken in chronological order (by `submitted_at` when every one has
    it, else as the API listed them, which is chronological on both forges).
    """
    opinionated = [r for r in reviews if r.state.upper() in OPINIONATED and r.user]
    if all(r.submitted_at is not None for r in opinionated):
        opinionated.sort(key=_submitted)
    latest: dict[str, tuple[Review, bool]] = {}
    for r in opinionated:
        key = r.user.casefold()
        prev = latest.pop(key, None)
        approved_before = prev is not None and (prev[1] or prev[0].state.upper() == APPROVED)
        latest[key] = (r, approved_before)  # re-inserted: ordered by latest review
    return list(latest.values())


def _submitted(r: Review) -> datetime:
    """A review's time, comparable: a time without a zone is read as UTC."""
    at = r.submitted_at or datetime.min
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _who_may_not_count(review: Review, approvers: list[str]) -> str | None:
    """Bots never count unless listed by name; with anyone allowed (`approvers: []`),
    only people who can write to the repository count."""
    listed = {login.casefold() for login, team in map(split_approver, approvers) if team is None}
    if review.is_bot and review.user.casefold() not in listed:
        return BOT
    if not approvers and review.write_access is not True:
        return NO_WRITE_ACCESS if review.write_access is False else WRITE_ACCESS_UNKNOWN
    return None


def _not_an_approver(user: str, approvers: list[str], is_member: IsMember) -> str | None:
    """None when `user` is a listed approver or an active member of a listed team."""
    users = {login.casefold() for login, team in map(split_approver, approvers) if team is None}
    if user.casefold() in users:
        return None
    pending = False
    for org, team in map(split_approver, approvers):
        if team is None:
            continue
        answer = is_member(org, team, user)
        if answer is True or answer == "active":
            return None
        pending = pending or answer == "pending"
    return MEMBERSHIP_PENDING if pending else NOT_APPROVER


def evaluate(
    policy: ApprovalPolicy,
    facts: PullRequestFacts | None,
    *,
    risk: str,
    is_rollback: bool,
    is_member: IsMember,
) -> Verdict:
    """Count the approvals of `facts` that satisfy `policy` for a change of `risk`.

    `facts` is None when the commit has no merged pull request (a direct push): that
    passes only when no approval is required.
    """
    rollback = is_rollback and policy.rollback is not None
    required = policy.required_for(risk, is_rollback=is_rollback)
    approvers = policy.approvers_for(is_rollback=is_rollback)
    if facts is None:
        return Verdict(
            passed=required == 0,
            required=required,
            approved_by=[],
            not_counted=[],
            missing=required,
            pull_request=None,
            author=None,
            risk=risk,
            rollback=rollback,
            approvers=approvers,
        )

    author = (facts.author or "").casefold()
    logins, emails = facts.contributors()
    head = facts.head_sha.casefold()
    reviewer_emails = frozenset(e.casefold() for r in facts.reviews for e in r.emails)
    untied = [] if facts.forge_enforces_four_eyes else facts.untied_commits(reviewer_emails)
    approved_by: list[str] = []
    not_counted: list[tuple[str, str]] = []
    for review, approved_before in _latest_opinions(facts.reviews):
        user, state = review.user, review.state.upper()
        if state == CHANGES_REQUESTED:
            not_counted.append((user, CHANGES_LATER if approved_before else CHANGES))
            continue
        if state == DISMISSED:
            not_counted.append((user, DISMISSED_REVIEW))
            continue
        key = user.casefold()
        reason: str | None = None
        if not policy.allow_self_approval:
            if author and key == author:
                reason = AUTHOR
            elif key in logins or any(e.casefold() in emails for e in review.emails):
                reason = COMMITTER
            elif not facts.commits_complete:
                reason = AUTHORS_UNKNOWN
            elif untied:
                reason = AUTHORS_UNTIED.format(commits=", ".join(_short(s) for s in untied))
        if reason is None and policy.fresh_only and (review.commit_id or "").casefold() != head:
            reason = (
                f"approval is stale (approved {_short(review.commit_id)}, "
                f"head is {_short(facts.head_sha)})"
            )
        if reason is None:
            reason = _who_may_not_count(review, approvers)
        if reason is None and approvers:
            reason = _not_an_approver(user, approvers, is_member)
        if reason is None:
            approved_by.append(user)
        else:
            not_counted.append((user, reason))

    missing = max(0, required - len(approved_by))
    return Verdict(
        passed=missing == 0,
        required=required,
        approved_by=approved_by,
        not_counted=not_counted,
        missing=missing,
        pull_request=facts.number,
        author=facts.author,
        risk=risk,
        rollback=rollback,
        head_sha=facts.head_sha,
        url=facts.url or None,
        approvers=approvers,
    )
