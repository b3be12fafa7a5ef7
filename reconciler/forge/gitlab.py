"""GitLab's REST API (v4) as an approval source, mapped onto the GitHub-shaped facts.

GitLab approvals name no commit, so freshness is derived (see `_approved_commit`):
1. the approval's `approved_at` and the merge request's diff versions (created by
   GitLab on every push) give the head that was current when it was approved;
2. without `approved_at` (older GitLab), the project's `reset_approvals_on_push`
   setting means GitLab itself drops approvals on push, so what is left is fresh;
3. otherwise the approved commit is unknown, and `freshOnly` does not count it.

A reviewer whose reviewer state is `requested_changes` counts as a later
CHANGES_REQUESTED review. Commits carry emails, not usernames: a reviewer is matched
to them through noreply addresses and the emails the users API shows (public email,
or every email to an admin token).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

from reconciler.approvals.facts import (
    APPROVED,
    CHANGES_REQUESTED,
    STATUS_CONTEXT,
    CommitFacts,
    PullRequestFacts,
    Review,
    co_author_emails,
    status_description,
)
from reconciler.errors import ApprovalSourceError
from reconciler.forge import DEFAULT_DEADLINE, PLAN_COMMENT_MARKER
from reconciler.forge.api import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_WAIT,
    forge_api,
    json_str,
    parse_time,
)
from reconciler.httpclient import Clock, Rng, Sleep

DEFAULT_API_URL = "https://gitlab.com/api/v4"
#: The common (GitHub) vocabulary and GitLab's own, mapped to GitLab's.
STATUS_STATES = {
    "success": "success",
    "failure": "failed",
    "error": "failed",
    "pending": "pending",
    "failed": "failed",
    "running": "running",
    "canceled": "canceled",
}


class GitLabSource:
    """Merge request facts, group membership, statuses and notes of one project."""

    kind = "gitlab"

    def __init__(
        self,
        api_url: str,
        token: str,
        project: str | int,
        *,
        deadline: float = DEFAULT_DEADLINE,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_wait: float = DEFAULT_MAX_WAIT,
        backoff: float = 1.0,
        sleep: Sleep = time.sleep,
        clock: Clock = time.time,
        rng: Rng = random.random,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.project = str(project)
        self._api = forge_api(
            "GitLab",
            api_url or DEFAULT_API_URL,
            headers={"PRIVATE-TOKEN": token, "User-Agent": "reconciler"},
            token=token,
            deadline=deadline,
            max_retries=max_retries,
            max_wait=max_wait,
            backoff=backoff,
            sleep=sleep,
            clock=clock,
            rng=rng,
            env=env,
        )
        self._p = f"/projects/{quote(self.project, safe='')}"
        self._user_ids: dict[str, int] = {}
        self._user_emails: dict[int, tuple[str, ...]] = {}
        self._members: dict[tuple[str, str], str] = {}
        self._reset_on_push: bool | None = None

    def __repr__(self) -> str:
        return f"GitLabSource({self.project!r})"

    def close(self) -> None:
        self._api.close()

    # --- reading -------------------------------------------------------------------

    def pull_request_for_commit(self, sha: str) -> PullRequestFacts | None:
        """The merged merge request that brought `sha` in, or None (a direct push)."""
        mrs = self._api.paginate(f"{self._p}/repository/commits/{quote(sha)}/merge_requests")
        merged = [m for m in mrs if isinstance(m, dict) and m.get("state") == "merged"]
        if not merged:
            return None
        want = sha.lower()

        def made(m: dict[str, Any]) -> bool:
            keys = ("merge_commit_sha", "squash_commit_sha", "sha")
            return any(str(m.get(k) or "").lower() == want for k in keys)

        chosen = next((m for m in merged if made(m)), merged[0])
        iid = chosen.get("iid")
        if not isinstance(iid, int):
            raise ApprovalSourceError("GitLab API: a merge request without an iid")
        return self.pull_request(iid)

    def pull_requests_for_commit(self, sha: str) -> list[int]:
        mrs = self._api.paginate(f"{self._p}/repository/commits/{quote(sha)}/merge_requests")
        return [m["iid"] for m in mrs if isinstance(m, dict) and isinstance(m.get("iid"), int)]

    def default_branch(self) -> str:
        project = self._api.get(self._p)
        branch = json_str(project, "default_branch")
        if branch is None:
            raise ApprovalSourceError(f"GitLab API: project {self.project} names no default branch")
        return branch

    def pull_request(self, number: int) -> PullRequestFacts:
        """Merge request `number` (its iid) with commits, approvals and reviewer states."""
        mr_path = f"{self._p}/merge_requests/{int(number)}"
        mr = self._api.get(mr_path)
        if not isinstance(mr, dict):
            raise ApprovalSourceError(f"GitLab API: merge request !{number} is not an object")
        head = json_str(mr, "sha")
        if head is None:
            raise ApprovalSourceError(f"GitLab API: merge request !{number} has no head commit")
        commits = self._api.paginate(f"{mr_path}/commits")
        approvals = self._api.get(f"{mr_path}/approvals")
        approved = approvals.get("approved_by") if isinstance(approvals, dict) else None
        entries = [
            a for a in approved or [] if isinstance(a, dict) and json_str(a, "user", "username")
        ]
        reviews: list[Review] = []
        if entries:
            versions = self._versions(mr_path)
            for a in entries:
                user = a["user"]
                uid = user.get("id")
                if isinstance(uid, int):
                    self._user_ids[user["username"].casefold()] = uid
                at = parse_time(a.get("approved_at"))
                reviews.append(
                    Review(
                        user=user["username"],
                        state=APPROVED,
                        commit_id=self._approved_commit(at, head, versions),
                        submitted_at=at,
                        emails=self._emails(uid) if isinstance(uid, int) else (),
                    )
                )
        # Reviewer states (GitLab 16.9+; 404 before): a standing "requested changes"
        # comes after any approval, so it cancels it. Untimed, so API order is kept.
        reviewers = self._api.get_or_none(f"{mr_path}/reviewers")
        for r in reviewers if isinstance(reviewers, list) else []:
            name = json_str(r, "user", "username")
            if name and isinstance(r, dict) and r.get("state") == "requested_changes":
                reviews.append(Review(user=name, state=CHANGES_REQUESTED))
        author = json_str(mr, "author", "username")
        return PullRequestFacts(
            number=int(mr.get("iid", number)),
            url=json_str(mr, "web_url") or "",
            title=json_str(mr, "title") or "",
            state=json_str(mr, "state") or "",
            merged=mr.get("state") == "merged",
            author=author,
            head_sha=head,
            base_ref=json_str(mr, "target_branch") or "",
            labels=tuple(x for x in mr.get("labels") or [] if isinstance(x, str)),
            commits=tuple(_commit(c) for c in commits if isinstance(c, dict)),
            reviews=tuple(reviews),
            merge_commit_sha=json_str(mr, "merge_commit_sha") or json_str(mr, "squash_commit_sha"),
        )

    def _versions(self, mr_path: str) -> list[tuple[datetime, str]]:
        """(created_at, head sha) of every diff version, oldest first."""
        out = []
        for v in self._api.paginate(f"{mr_path}/versions"):
            at = parse_time(v.get("created_at")) if isinstance(v, dict) else None
            sha = json_str(v, "head_commit_sha")
            if at is not None and sha is not None:
                out.append((at, sha))
        out.sort(key=lambda t: t[0])
        return out

    def _approved_commit(
        self, at: datetime | None, head: str, versions: list[tuple[datetime, str]]
    ) -> str | None:
        if at is not None and versions:
            current = [sha for created, sha in versions if created <= at]
            return current[-1] if current else None
        if self._resets_on_push():
            return head
        return None

    def _resets_on_push(self) -> bool:
        if self._reset_on_push is None:
            body = self._api.get_or_none(f"{self._p}/approvals", missing=(403, 404))
            self._reset_on_push = (
                isinstance(body, dict) and body.get("reset_approvals_on_push") is True
            )
        return self._reset_on_push

    def _emails(self, uid: int) -> tuple[str, ...]:
        if uid not in self._user_emails:
            user = self._api.get_or_none(f"/users/{uid}")
            found = []
            for key in ("public_email", "email", "commit_email"):
                value = json_str(user, key)
                if value and "@" in value:
                    found.append(value)
            self._user_emails[uid] = tuple(dict.fromkeys(found))
        return self._user_emails[uid]

    def _user_id(self, username: str) -> int | None:
        key = username.casefold()
        if key not in self._user_ids:
            users = self._api.get("/users", {"username": username})
            for u in users if isinstance(users, list) else []:
                if (
                    json_str(u, "username")
                    and u["username"].casefold() == key
                    and isinstance(u.get("id"), int)
                ):
                    self._user_ids[key] = u["id"]
        return self._user_ids.get(key)

    def membership(self, org: str, team: str, user: str) -> str:
        """ "active", "pending" (awaiting) or "none" for group `org/team` (inherited too)."""
        group = f"{org}/{team}" if team else org
        key = (group.casefold(), user.casefold())
        if key not in self._members:
            uid = self._user_id(user)
            state = "none"
            if uid is not None:
                member = self._api.get_or_none(f"/groups/{quote(group, safe='')}/members/all/{uid}")
                if isinstance(member, dict):
                    if member.get("membership_state") == "awaiting":
                        state = "pending"
                    elif (
                        member.get("state", "active") == "active"
                        and member.get("membership_state", "active") == "active"
                    ):
                        state = "active"
            self._members[key] = state
        return self._members[key]

    def is_member(self, org: str, team: str, user: str) -> bool:
        return self.membership(org, team, user) == "active"

    # --- writing -------------------------------------------------------------------

    def set_status(
        self,
        sha: str,
        state: str,
        description: str,
        context: str = STATUS_CONTEXT,
        target_url: str | None = None,
    ) -> None:
        """Accepts GitHub's states (success, failure, error, pending) or GitLab's own."""
        if state not in STATUS_STATES:
            raise ValueError(f"commit status state must be one of {', '.join(STATUS_STATES)}")
        body: dict[str, Any] = {
            "state": STATUS_STATES[state],
            "name": context,
            "description": status_description(description),
        }
        if target_url:
            body["target_url"] = target_url
        self._api.send("POST", f"{self._p}/statuses/{quote(sha)}", body, ok=(200, 201))

    def upsert_comment(self, pr_number: int, body: str, marker: str = PLAN_COMMENT_MARKER) -> int:
        """Edit our note (the one holding `marker`) or create it; returns its id."""
        if marker not in body:
            body = f"{marker}\n{body}"
        notes_path = f"{self._p}/merge_requests/{int(pr_number)}/notes"
        notes = self._api.paginate(notes_path, {"sort": "asc", "order_by": "created_at"})
        for n in notes:
            if (
                isinstance(n, dict)
                and not n.get("system")
                and marker in str(n.get("body") or "")
                and isinstance(n.get("id"), int)
            ):
                self._api.send("PUT", f"{notes_path}/{n['id']}", {"body": body})
                return int(n["id"])
        created = self._api.send("POST", notes_path, {"body": body}, ok=(201,)).json()
        return int(created["id"])

    def open_merge_request(
        self, source_branch: str, target_branch: str, title: str, description: str
    ) -> tuple[int, str]:
        """Open a merge request (or return the open one for the same branches)."""
        resp = self._api.send(
            "POST",
            f"{self._p}/merge_requests",
            {
                "source_branch": source_branch,
                "target_branch": target_branch,
                "title": title,
                "description": description,
            },
            ok=(201, 409),
        )
        if resp.status_code == 201:
            mr = resp.json()
            return int(mr["iid"]), str(mr.get("web_url") or "")
        existing = self._api.get(
            f"{self._p}/merge_requests",
            {"state": "opened", "source_branch": source_branch, "target_branch": target_branch},
        )
        if isinstance(existing, list) and existing and isinstance(existing[0], dict):
            return int(existing[0]["iid"]), str(existing[0].get("web_url") or "")
        raise ApprovalSourceError(
            f"GitLab API: cannot open a merge request from {source_branch} into {target_branch}"
        )

    def open_pull_request(self, head: str, base: str, title: str, body: str) -> tuple[int, str]:
        """The common name (see `ForgeSource`)."""
        return self.open_merge_request(head, base, title, body)


def _commit(c: dict[str, Any]) -> CommitFacts:
    return CommitFacts(
        sha=json_str(c, "id") or "",
        author_email=json_str(c, "author_email"),
        committer_email=json_str(c, "committer_email"),
        co_author_emails=co_author_emails(json_str(c, "message") or ""),
    )
