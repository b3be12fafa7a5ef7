"""GitHub's REST API as an approval source (and where results are written back).

Pinned to API version 2022-11-28: it still carries `merge_commit_sha`, which the
2026-03-10 version removed.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from reconciler.approvals.facts import (
    STATUS_CONTEXT,
    WRITERS,
    CommitFacts,
    PullRequestFacts,
    Review,
    co_author_emails,
    status_description,
)
from reconciler.errors import ApprovalSourceError, ConfigError
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

API_VERSION = "2022-11-28"
DEFAULT_API_URL = "https://api.github.com"
STATUS_STATES = ("error", "failure", "pending", "success")
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def _login(obj: Any) -> str | None:
    if isinstance(obj, dict):
        login = obj.get("login")
        if isinstance(login, str) and login:
            return login
    return None


class GitHubSource:
    """Approval facts, team membership, statuses and comments from one repository."""

    kind = "github"

    def __init__(
        self,
        api_url: str,
        token: str,
        repository: str,
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
        if not _REPOSITORY.match(repository):
            raise ConfigError(f"GitHub repository {repository!r} is not of the form owner/name")
        self.repository = repository
        self._api = forge_api(
            "GitHub",
            api_url or DEFAULT_API_URL,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "Authorization": f"Bearer {token}",
                "User-Agent": "reconciler",
            },
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
        self._repo = f"/repos/{repository}"
        self._teams: dict[tuple[str, str, str], str] = {}
        self._env = dict(env or {})
        self._identity: str | None = None

    def __repr__(self) -> str:
        return f"GitHubSource({self.repository!r})"

    def close(self) -> None:
        self._api.close()

    # --- reading -------------------------------------------------------------------

    def pull_request_for_commit(self, sha: str) -> PullRequestFacts | None:
        """The merged pull request that brought `sha` in, or None (a direct push).

        Prefers the pull request whose merge commit is `sha` (merge, squash, rebase);
        else the merged one the API lists for the commit.
        """
        pulls = self._api.paginate(f"{self._repo}/commits/{quote(sha)}/pulls")
        merged = [p for p in pulls if isinstance(p, dict) and p.get("merged_at")]
        if not merged:
            return None
        exact = [p for p in merged if str(p.get("merge_commit_sha") or "").lower() == sha.lower()]
        chosen = (exact or merged)[0]
        number = chosen.get("number")
        if not isinstance(number, int):
            raise ApprovalSourceError("GitHub API: a pull request without a number")
        return self.pull_request(number)

    def pull_requests_for_commit(self, sha: str) -> list[int]:
        pulls = self._api.paginate(f"{self._repo}/commits/{quote(sha)}/pulls")
        return [
            p["number"] for p in pulls if isinstance(p, dict) and isinstance(p.get("number"), int)
        ]

    def default_branch(self) -> str:
        repo = self._api.get(self._repo)
        branch = json_str(repo, "default_branch")
        if branch is None:
            raise ApprovalSourceError(f"GitHub API: {self.repository} names no default branch")
        return branch

    def pull_request(self, number: int) -> PullRequestFacts:
        pr = self._api.get(f"{self._repo}/pulls/{int(number)}")
        if not isinstance(pr, dict):
            raise ApprovalSourceError(f"GitHub API: pull request #{number} is not an object")
        reviews = self._api.paginate(f"{self._repo}/pulls/{int(number)}/reviews")
        commits = self._api.paginate(f"{self._repo}/pulls/{int(number)}/commits")
        total = pr.get("commits")
        complete = not (isinstance(total, int) and total > len(commits))
        head = json_str(pr, "head", "sha")
        if head is None:
            raise ApprovalSourceError(f"GitHub API: pull request #{number} has no head commit")
        return PullRequestFacts(
            number=int(pr.get("number", number)),
            url=json_str(pr, "html_url") or "",
            title=json_str(pr, "title") or "",
            state=json_str(pr, "state") or "",
            merged=bool(pr.get("merged")) or bool(pr.get("merged_at")),
            author=_login(pr.get("user")),
            head_sha=head,
            base_ref=json_str(pr, "base", "ref") or "",
            labels=tuple(
                lbl["name"]
                for lbl in pr.get("labels") or []
                if isinstance(lbl, dict) and isinstance(lbl.get("name"), str)
            ),
            commits=tuple(_commit(c) for c in commits if isinstance(c, dict)),
            reviews=tuple(r for r in map(_review, reviews) if r is not None),
            merge_commit_sha=json_str(pr, "merge_commit_sha"),
            commits_complete=complete,
        )

    def membership(self, org: str, team: str, user: str) -> str:
        """ "active", "pending" or "none" (404); cached per run."""
        key = (org.casefold(), team.casefold(), user.casefold())
        if key not in self._teams:
            path = f"/orgs/{quote(org)}/teams/{quote(team)}/memberships/{quote(user)}"
            try:
                body = self._api.get_or_none(path)
            except ApprovalSourceError as e:
                raise ApprovalSourceError(
                    f"{e.message} (team @{org}/{team})",
                    details="reading team membership needs a token with read:org "
                    "(a GitHub App or personal token: GITHUB_TOKEN cannot read teams)",
                ) from None
            state = body.get("state") if isinstance(body, dict) else None
            self._teams[key] = state if state in ("active", "pending") else "none"
        return self._teams[key]

    def is_member(self, org: str, team: str, user: str) -> bool:
        """Active members only: a pending invitation is not membership."""
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
        if state not in STATUS_STATES:
            raise ValueError(f"commit status state must be one of {', '.join(STATUS_STATES)}")
        body: dict[str, Any] = {
            "state": state,
            "description": status_description(description),
            "context": context,
        }
        if target_url:
            body["target_url"] = target_url
        self._api.send("POST", f"{self._repo}/statuses/{quote(sha)}", body, ok=(201,))

    def upsert_comment(self, pr_number: int, body: str, marker: str = PLAN_COMMENT_MARKER) -> int:
        """Edit our comment (the one holding `marker`, written by the token's own user:
        anyone can paste the marker) or create it; returns its id."""
        if marker not in body:
            body = f"{marker}\n{body}"
        me = self._me()
        comments = self._api.paginate(f"{self._repo}/issues/{int(pr_number)}/comments")
        for c in comments:
            if (
                isinstance(c, dict)
                and marker in str(c.get("body") or "")
                and "id" in c
                and me is not None
                and (_login(c.get("user")) or "").casefold() == me.casefold()
            ):
                self._api.send(
                    "PATCH", f"{self._repo}/issues/comments/{int(c['id'])}", {"body": body}
                )
                return int(c["id"])
        resp = self._api.send(
            "POST", f"{self._repo}/issues/{int(pr_number)}/comments", {"body": body}, ok=(201,)
        )
        created = resp.json()
        return int(created["id"])

    def _me(self) -> str | None:
        """The token's own login: `GET /user`; an installation token cannot ask, so in
        Actions it is the default token's `github-actions[bot]` unless
        RECONCILER_COMMENT_AUTHOR says otherwise. None: never edit, always create."""
        if self._identity is None:
            named = self._env.get("RECONCILER_COMMENT_AUTHOR")
            if named:
                self._identity = named
            else:
                user = self._api.get_or_none("/user", missing=(401, 403, 404))
                login = json_str(user, "login")
                if login is None and self._env.get("GITHUB_ACTIONS") == "true":
                    login = "github-actions[bot]"
                self._identity = login or ""
        return self._identity or None

    def open_pull_request(self, head: str, base: str, title: str, body: str) -> tuple[int, str]:
        """Open a pull request (or return the open one for the same branches)."""
        resp = self._api.send(
            "POST",
            f"{self._repo}/pulls",
            {"head": head, "base": base, "title": title, "body": body},
            ok=(201, 422),
        )
        if resp.status_code == 201:
            pr = resp.json()
            return int(pr["number"]), str(pr.get("html_url") or "")
        owner = self.repository.split("/")[0]
        qualified = head if ":" in head else f"{owner}:{head}"
        existing = self._api.get(
            f"{self._repo}/pulls", {"head": qualified, "base": base, "state": "open"}
        )
        if isinstance(existing, list) and existing and isinstance(existing[0], dict):
            return int(existing[0]["number"]), str(existing[0].get("html_url") or "")
        raise ApprovalSourceError(
            f"GitHub API: cannot open a pull request from {head} into {base}",
            details=_unprocessable(resp),
        )


def _unprocessable(resp: Any) -> str | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    parts = [str(body.get("message") or "")]
    for err in body.get("errors") or []:
        if isinstance(err, dict) and err.get("message"):
            parts.append(str(err["message"]))
    return "; ".join(p for p in parts if p) or None


def _commit(c: dict[str, Any]) -> CommitFacts:
    message = json_str(c, "commit", "message") or ""
    return CommitFacts(
        sha=json_str(c, "sha") or "",
        author_login=_login(c.get("author")),
        author_email=json_str(c, "commit", "author", "email"),
        committer_login=_login(c.get("committer")),
        committer_email=json_str(c, "commit", "committer", "email"),
        co_author_emails=co_author_emails(message),
    )


def _review(r: Any) -> Review | None:
    if not isinstance(r, dict):
        return None
    user = _login(r.get("user"))
    state = json_str(r, "state")
    if user is None or state is None:  # a deleted account ("ghost") or a malformed entry
        return None
    association = json_str(r, "author_association")
    return Review(
        user=user,
        state=state.upper(),
        commit_id=json_str(r, "commit_id"),
        submitted_at=parse_time(r.get("submitted_at")),
        bot=json_str(r, "user", "type") == "Bot",
        write_access=None if association is None else association.upper() in WRITERS,
    )
