"""GitLab's REST API (v4) as an approval source, mapped onto the GitHub-shaped facts.

GitLab approvals name no commit, so freshness is derived (see `_approved_commit`):
1. the approval's `approved_at` and the merge request's diff versions (created by
   GitLab on every push) give the head that was current when it was approved;
2. without `approved_at` (older GitLab), the project's `reset_approvals_on_push`
   setting means GitLab itself drops approvals on push, so what is left is fresh;
3. otherwise the approved commit is unknown, and `freshOnly` does not count it.

A reviewer whose reviewer state is `requested_changes` counts as a later
CHANGES_REQUESTED review.

Identity (docs/design.md, "Identity fails closed"): commits carry emails, not
usernames. A commit is tied to an account when its email is a noreply address or an
email the users API shows for the merge request's author or an approver (the public
email; every email to an admin token). GitLab's default is a private commit email, so
commits are often untied, and an untied commit blocks four eyes — unless the project
itself refuses approvals by the author and by committers (`_forge_enforces_four_eyes`).
Approvers' write access is their effective access level on the project (Developer and
up); bots are GitLab's bot users. A group approver means the group and its subgroups:
direct members of each, never members inherited from ancestor groups.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from reconciler.approvals.facts import (
    APPROVED,
    CHANGES_REQUESTED,
    STATUS_CONTEXT,
    CommitFacts,
    PullRequestFacts,
    Review,
    co_author_emails,
    noreply_login,
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
from reconciler.redaction import Register, to_backstop

if TYPE_CHECKING:
    import httpx

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
#: GitLab's access levels (members API): Developer and up can push to the project.
DEVELOPER = 30
#: Usernames GitLab gives its bot users: project and group access tokens
#: (`project_123_bot_…`, `group_45_bot_…`) and service accounts. The users API's
#: `bot: true` says so too; the name is a second sign when the user cannot be read.
_BOT_USERNAME = re.compile(r"^(?:(?:project|group)_\d+_bot|service_account_)", re.I)


@dataclass(frozen=True)
class _User:
    """What `GET /users/:id` says about a user: the emails it shows, and whether the
    user is one of GitLab's bot users."""

    emails: tuple[str, ...] = ()
    bot: bool = False


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
        transport: httpx.BaseTransport | None = None,
        register: Register = to_backstop,
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
            transport=transport,
            register=register,
        )
        self._p = f"/projects/{quote(self.project, safe='')}"
        self._user_ids: dict[str, int] = {}
        self._users: dict[int, _User] = {}
        self._access: dict[int, bool] = {}
        self._members: dict[tuple[str, str], str] = {}
        self._direct: dict[tuple[str, int], str] = {}
        self._descendants: dict[str, list[str]] = {}
        self._settings: dict[str, Any] | None = None
        self._settings_read = False
        self._me: int | None = None
        self._me_read = False

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
        author = json_str(mr, "author", "username")
        #: email (case-folded) → the username it ties a commit to
        known: dict[str, str] = {}
        author_id = mr["author"].get("id") if author else None
        if author and isinstance(author_id, int):
            known.update(dict.fromkeys(self._remember(author, author_id).emails, author))
        reviews = self._approvals(mr_path, head, known)
        # Reviewer states (GitLab 16.9+; 404 before): a standing "requested changes"
        # comes after any approval, so it cancels it. Untimed, so API order is kept.
        reviewers = self._api.get_or_none(f"{mr_path}/reviewers")
        for r in reviewers if isinstance(reviewers, list) else []:
            name = json_str(r, "user", "username")
            if name and isinstance(r, dict) and r.get("state") == "requested_changes":
                reviews.append(Review(user=name, state=CHANGES_REQUESTED))
        facts = PullRequestFacts(
            number=int(mr.get("iid", number)),
            url=json_str(mr, "web_url") or "",
            title=json_str(mr, "title") or "",
            state=json_str(mr, "state") or "",
            merged=mr.get("state") == "merged",
            author=author,
            head_sha=head,
            base_ref=json_str(mr, "target_branch") or "",
            labels=tuple(x for x in mr.get("labels") or [] if isinstance(x, str)),
            commits=tuple(_commit(c, known) for c in commits if isinstance(c, dict)),
            reviews=tuple(reviews),
            merge_commit_sha=json_str(mr, "merge_commit_sha") or json_str(mr, "squash_commit_sha"),
        )
        tied = frozenset(known)
        if (
            facts.untied_commits(tied)
            and self._forge_enforces_four_eyes()
            and _committer_rule_covers(facts.commits, tied)
        ):
            facts = replace(facts, forge_enforces_four_eyes=True)
        return facts

    def _approvals(self, mr_path: str, head: str, known: dict[str, str]) -> list[Review]:
        """The approvals, each with what the users and members APIs say of the approver
        (whose emails also go into `known`)."""
        approvals = self._api.get(f"{mr_path}/approvals")
        approved = approvals.get("approved_by") if isinstance(approvals, dict) else None
        entries = [
            a for a in approved or [] if isinstance(a, dict) and json_str(a, "user", "username")
        ]
        reviews: list[Review] = []
        versions = self._versions(mr_path) if entries else []
        for a in entries:
            name = a["user"]["username"]
            uid = a["user"].get("id")
            user = self._remember(name, uid) if isinstance(uid, int) else _User()
            for email in user.emails:
                known.setdefault(email, name)
            at = parse_time(a.get("approved_at"))
            reviews.append(
                Review(
                    user=name,
                    state=APPROVED,
                    commit_id=self._approved_commit(at, head, versions),
                    submitted_at=at,
                    emails=user.emails,
                    bot=user.bot or bool(_BOT_USERNAME.match(name)),
                    write_access=self._write_access(uid) if isinstance(uid, int) else None,
                )
            )
        return reviews

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
        return (self._project_approval_settings() or {}).get("reset_approvals_on_push") is True

    def _forge_enforces_four_eyes(self) -> bool:
        """Whether GitLab itself refuses approvals by the MR's author and committers.

        `GET /projects/:id/approvals` with `merge_requests_author_approval: false`
        ("Prevent approval by author") and `merge_requests_disable_committers_approval:
        true` ("Prevent approvals by users who add commits"): GitLab then matches commit
        emails to accounts itself, private emails included, which this API cannot. That
        rule names committers, not authors or co-authors (see `_committer_rule_covers`).
        Unreadable settings (Free tier: 403) enforce nothing.
        """
        body = self._project_approval_settings()
        return (
            body is not None
            and body.get("merge_requests_author_approval") is False
            and body.get("merge_requests_disable_committers_approval") is True
        )

    def _project_approval_settings(self) -> dict[str, Any] | None:
        if not self._settings_read:
            body = self._api.get_or_none(f"{self._p}/approvals", missing=(403, 404))
            self._settings = body if isinstance(body, dict) else None
            self._settings_read = True
        return self._settings

    def _remember(self, username: str, uid: int) -> _User:
        """`GET /users/:id` (cached): the emails it shows and whether it is a bot."""
        self._user_ids[username.casefold()] = uid
        if uid not in self._users:
            body = self._api.get_or_none(f"/users/{uid}")
            found = []
            for key in ("public_email", "email", "commit_email"):
                value = json_str(body, key)
                if value and "@" in value:
                    found.append(value.casefold())
            bot = isinstance(body, dict) and body.get("bot") is True
            self._users[uid] = _User(tuple(dict.fromkeys(found)), bot)
        return self._users[uid]

    def _write_access(self, uid: int) -> bool:
        """Developer or more on the project (`members/all`: access through its groups is
        real access here); not a member (404), pending or blocked: no."""
        if uid not in self._access:
            member = self._api.get_or_none(f"{self._p}/members/all/{uid}")
            level = member.get("access_level") if isinstance(member, dict) else None
            self._access[uid] = isinstance(level, int) and level >= DEVELOPER and _active(member)
        return self._access[uid]

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
        """ "active", "pending" (awaiting) or "none" for group `org/team`: a direct member of
        the group or of one of its subgroups. Never `members/all`, which adds everyone
        inherited from ancestor groups (a Guest of `acme` is no member of `acme/leads`)."""
        group = f"{org}/{team}" if team else org
        key = (group.casefold(), user.casefold())
        if key not in self._members:
            uid = self._user_id(user)
            state = "none"
            if uid is not None:
                state = self._direct_member(quote(group, safe=""), uid)
                if state != "active":
                    for sub in self._subgroups(group):
                        found = self._direct_member(sub, uid)
                        if found == "active":
                            state = found
                            break
                        if found == "pending":
                            state = found
            self._members[key] = state
        return self._members[key]

    def _direct_member(self, group: str, uid: int) -> str:
        """`GET /groups/:id/members/:user_id`: direct members only."""
        key = (group, uid)
        if key not in self._direct:
            member = self._api.get_or_none(f"/groups/{group}/members/{uid}")
            state = "none"
            if isinstance(member, dict):
                if member.get("membership_state") == "awaiting":
                    state = "pending"
                elif _active(member):
                    state = "active"
            self._direct[key] = state
        return self._direct[key]

    def _subgroups(self, group: str) -> list[str]:
        """The ids of every group below `group` (`descendant_groups`, paginated); none
        when the group does not exist or the token cannot see it (404)."""
        key = group.casefold()
        if key not in self._descendants:
            path = f"/groups/{quote(group, safe='')}/descendant_groups"
            first = self._api.get_or_none(path, {"per_page": 100})
            found = first if isinstance(first, list) else []
            if len(found) >= 100:  # more than a page: read them all
                found = self._api.paginate(path)
            self._descendants[key] = [
                str(g["id"]) for g in found if isinstance(g, dict) and isinstance(g.get("id"), int)
            ]
        return self._descendants[key]

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
        """Edit our note (the one holding `marker`, written by the token's own user: anyone
        can paste the marker) or create it; returns its id."""
        if marker not in body:
            body = f"{marker}\n{body}"
        me = self._token_user()
        notes_path = f"{self._p}/merge_requests/{int(pr_number)}/notes"
        notes = self._api.paginate(notes_path, {"sort": "asc", "order_by": "created_at"})
        for n in notes:
            if (
                isinstance(n, dict)
                and not n.get("system")
                and marker in str(n.get("body") or "")
                and isinstance(n.get("id"), int)
                and me is not None
                and isinstance(n.get("author"), dict)
                and n["author"].get("id") == me
            ):
                self._api.send("PUT", f"{notes_path}/{n['id']}", {"body": body})
                return int(n["id"])
        created = self._api.send("POST", notes_path, {"body": body}, ok=(201,)).json()
        return int(created["id"])

    def _token_user(self) -> int | None:
        """The token's own user id (`GET /user`; a project access token's bot user).
        None when it cannot be read: then never edit, always create."""
        if not self._me_read:
            user = self._api.get_or_none("/user", missing=(401, 403, 404))
            uid = user.get("id") if isinstance(user, dict) else None
            self._me = uid if isinstance(uid, int) else None
            self._me_read = True
        return self._me

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


def _commit(c: dict[str, Any], known: Mapping[str, str]) -> CommitFacts:
    """A commit, its author and committer tied to a username where `known` (email →
    username, from the users API) has their email."""
    author = json_str(c, "author_email")
    committer = json_str(c, "committer_email")
    return CommitFacts(
        sha=json_str(c, "id") or "",
        author_login=known.get(author.casefold()) if author else None,
        author_email=author,
        committer_login=known.get(committer.casefold()) if committer else None,
        committer_email=committer,
        co_author_emails=co_author_emails(json_str(c, "message") or ""),
    )


def _committer_rule_covers(commits: Iterable[CommitFacts], known: frozenset[str]) -> bool:
    """Whether GitLab's committer rule leaves nobody unknown: it names each commit's
    committer (matched by email, private ones too), not an author who did not commit
    it (a cherry-pick, a rebase) nor a `Co-authored-by:` co-author; those must be tied
    here (a login, a noreply address, or an email in `known`)."""
    for c in commits:
        others: list[tuple[str | None, str | None]] = [(None, e) for e in c.co_author_emails]
        committer = (c.committer_email or c.author_email or "").casefold()
        if (c.author_email or "").casefold() != committer or not c.author_email:
            others.append((c.author_login, c.author_email))
        for login, email in others:
            if not (login or (email and (noreply_login(email) or email.casefold() in known))):
                return False
    return True


def _active(member: Mapping[str, Any]) -> bool:
    """A member whose account is active and whose membership is not awaiting approval."""
    return bool(
        member.get("state", "active") == "active"
        and member.get("membership_state", "active") == "active"
    )
