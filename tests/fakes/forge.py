"""Fake forges for tests: real HTTP servers on 127.0.0.1 that answer like GitHub's REST API
(here) and GitLab's (`fakes.gitlab`), with in-memory state the test sets up.

Use as a context manager (no shared pytest fixture, so nothing collides):

    with FakeGitHub() as gh:
        gh.add_pull_request(7, author="bob", head_sha=HEAD, merge_commit_sha=MERGE)
        gh.add_review(7, "alice", "APPROVED", commit_id=HEAD)
        source = GitHubSource(gh.url, gh.token, gh.repository, sleep=...)

Failure modes: `fail_next(n, status=...)`, `rate_limit_next(...)`,
`quota_exhausted_next(...)`, `down = 503` (or "drop" to close connections unanswered,
"drip-headers" / "drip-body" to answer one byte every 0.8 s for ever: `fakes.slow`).
Every request is recorded in `requests` (method, path, query, headers, JSON body).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from .loopback import ThreadedServer
from .slow import drip

JSON = Any
Response = tuple[int, JSON, dict[str, str]]


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str  # raw path, without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: JSON
    target: str  # the raw request target (path and query) as sent


@dataclass
class Request:
    method: str
    segments: list[str]  # decoded path segments
    query: dict[str, str]
    headers: dict[str, str]
    body: JSON
    host: str
    raw_path: str


Scripted = int | Literal["drop", "drip-headers", "drip-body"]


@dataclass
class _Scripted:
    status: Scripted
    headers: dict[str, str] = field(default_factory=dict)
    body: JSON = None
    method: str | None = None
    path_re: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_re is None or re.search(self.path_re, path) is not None
        )


class FakeForge(ThreadedServer):
    """The HTTP machinery shared by the fakes: routing, recording, failure modes."""

    #: Path prefix of the API (GitLab serves under /api/v4).
    prefix: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Recorded] = []
        self.down: Scripted | None = None
        self._scripted: deque[_Scripted] = deque()
        self._routes: list[tuple[str, list[str], Callable[..., Response]]] = []
        self._ids = itertools.count(1000)

    @property
    def origin(self) -> str:
        return super().url

    @property
    def url(self) -> str:
        """The API root to give a client."""
        return self.origin + "".join("/" + p for p in self.prefix)

    # --- failure modes -------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: Scripted = 500,
        headers: Mapping[str, str] | None = None,
        body: JSON = None,
        method: str | None = None,
        path_re: str | None = None,
    ) -> None:
        """The next `count` requests (of `method` on a path matching `path_re`, if given)
        get this answer ("drop": the connection is closed unanswered)."""
        with self.lock:
            for _ in range(count):
                self._scripted.append(
                    _Scripted(
                        status,
                        dict(headers or {}),
                        body or {"message": "Server Error"},
                        method,
                        path_re,
                    )
                )

    def rate_limit_next(
        self, count: int = 1, *, retry_after: int = 3, status: int = 429, **match: str
    ) -> None:
        """Secondary rate limit: 429 (or 403) with `retry-after`."""
        self.fail_next(
            count,
            status=status,
            headers={"retry-after": str(retry_after)},
            body={"message": "You have exceeded a secondary rate limit."},
            **match,  # type: ignore[arg-type]
        )

    def quota_exhausted_next(self, count: int = 1, *, reset: int, **match: str) -> None:
        """Primary rate limit: 403 with x-ratelimit-remaining 0 until epoch `reset`."""
        self.fail_next(
            count,
            **match,  # type: ignore[arg-type]
            status=403,
            headers={
                "x-ratelimit-limit": "5000",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-used": "5000",
                "x-ratelimit-reset": str(reset),
            },
            body={"message": "API rate limit exceeded for installation ID 1."},
        )

    # --- routing -------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Callable[..., Response]) -> None:
        """`pattern` like "repos/{owner}/{repo}/pulls/{number}"; params go to `handler`."""
        self._routes.append((method, pattern.strip("/").split("/"), handler))

    def authorized(self, req: Request) -> bool:
        return True

    def unauthorized(self) -> Response:
        return 401, {"message": "Bad credentials"}, {}

    def not_found(self) -> Response:
        return 404, {"message": "Not Found"}, {}

    def base_headers(self) -> dict[str, str]:
        return {}

    def next_id(self) -> int:
        return next(self._ids)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in h.headers.items()}
        query = parse_qs(split.query, keep_blank_values=True)
        with self.lock:
            self.requests.append(Recorded(h.command, split.path, query, headers, body, h.path))
            scripted = next((x for x in self._scripted if x.matches(h.command, split.path)), None)
            if scripted is not None:
                self._scripted.remove(scripted)
            if scripted is None and self.down is not None:
                scripted = _Scripted(self.down, {}, {"message": "Service Unavailable"})
        if scripted is not None:
            if scripted.status == "drop":
                h.close_connection = True
                return
            if isinstance(scripted.status, str):  # one of the drip MODES
                drip(h, in_body=scripted.status == "drip-body", stop=self._stopping)
                return
            self._write(h, scripted.status, scripted.body, scripted.headers)
            return
        segments = [unquote(s) for s in split.path.strip("/").split("/")]
        if tuple(segments[: len(self.prefix)]) != self.prefix:
            self._write(h, *self.not_found())
            return
        req = Request(
            method=h.command,
            segments=segments[len(self.prefix) :],
            query={k: v[-1] for k, v in query.items()},
            headers=headers,
            body=body,
            host=headers.get("host", ""),
            raw_path=split.path,
        )
        if not self.authorized(req):
            self._write(h, *self.unauthorized())
            return
        with self.lock:
            status, payload, extra = self._answer(req)
        self._write(h, status, payload, extra)

    def _answer(self, req: Request) -> Response:
        for method, pattern, handler in self._routes:
            if method != req.method or len(pattern) != len(req.segments):
                continue
            params: dict[str, str] = {}
            for want, got in zip(pattern, req.segments, strict=True):
                if want.startswith("{") and want.endswith("}"):
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                return handler(req, **params)
        return self.not_found()

    def _write(
        self, h: BaseHTTPRequestHandler, status: int, payload: JSON, extra: Mapping[str, str]
    ) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        h.send_response(status)
        for k, v in {**self.base_headers(), **extra}.items():
            h.send_header(k, v)
        if payload is not None:
            h.send_header("content-type", "application/json; charset=utf-8")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    # --- pagination ----------------------------------------------------------------

    def paginate(
        self, req: Request, items: Sequence[JSON], *, default: int = 30, cap: int = 100
    ) -> tuple[list[JSON], dict[str, str]]:
        """One page of `items` by `page`/`per_page`, with a real `Link` header."""
        per_page = max(1, min(cap, int(req.query.get("per_page") or default)))
        page = max(1, int(req.query.get("page") or 1))
        last = max(1, -(-len(items) // per_page))
        chunk = list(items[(page - 1) * per_page : page * per_page])
        headers: dict[str, str] = {}

        def link(p: int) -> str:
            q = {**req.query, "page": str(p), "per_page": str(per_page)}
            return f"<http://{req.host}{req.raw_path}?{urlencode(q)}>"

        rels = []
        if page < last:
            rels += [f'{link(page + 1)}; rel="next"', f'{link(last)}; rel="last"']
        if page > 1:
            rels += [f'{link(page - 1)}; rel="prev"', f'{link(1)}; rel="first"']
        if rels:
            headers["link"] = ", ".join(rels)
        return chunk, headers

    # --- assertions helpers --------------------------------------------------------

    def calls(self, method: str | None = None, path_re: str | None = None) -> list[Recorded]:
        with self.lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method)
                and (path_re is None or re.search(path_re, r.path))
            ]


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _user(login: str, uid: int) -> dict[str, Any]:
    return {
        "login": login,
        "id": uid,
        "node_id": f"U_{uid}",
        "type": "Bot" if login.endswith("[bot]") else "User",
        "site_admin": False,
        "html_url": f"https://github.com/{login}",
    }


class FakeGitHub(FakeForge):
    """GitHub's REST API for one repository: pulls, reviews, commits, teams, statuses,
    issue comments, and pull-request creation."""

    BOT = "github-actions[bot]"

    def __init__(
        self, repository: str = "acme/manifests", token: str = "ghs_FAKEtoken1234"
    ) -> None:
        super().__init__()
        self.repository = repository
        self.token = token
        self.pulls: dict[int, dict[str, Any]] = {}
        self.reviews: dict[int, list[dict[str, Any]]] = {}
        self.pr_commits: dict[int, list[dict[str, Any]]] = {}
        self.commit_pulls: dict[str, list[int]] = {}
        self.memberships: dict[tuple[str, str, str], str] = {}
        self.statuses: list[dict[str, Any]] = []
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self._uids: dict[str, int] = {}
        self._clock = itertools.count(1)
        #: The token's own account (`GET /user`); None answers 403 like an
        #: installation token ("Resource not accessible by integration").
        self.me: str | None = self.BOT
        self.default_branch = "main"
        repo = "repos/{owner}/{repo}"
        self.route("GET", repo, self._get_repo)
        self.route("GET", "user", self._get_me)
        self.route("GET", f"{repo}/commits/{{sha}}/pulls", self._commit_pulls)
        self.route("GET", f"{repo}/pulls", self._list_pulls)
        self.route("POST", f"{repo}/pulls", self._create_pull)
        self.route("GET", f"{repo}/pulls/{{number}}", self._get_pull)
        self.route("GET", f"{repo}/pulls/{{number}}/reviews", self._list_reviews)
        self.route("GET", f"{repo}/pulls/{{number}}/commits", self._list_commits)
        self.route("GET", "orgs/{org}/teams/{team}/memberships/{user}", self._membership)
        self.route("POST", f"{repo}/statuses/{{sha}}", self._create_status)
        self.route("GET", f"{repo}/issues/{{number}}/comments", self._list_comments)
        self.route("POST", f"{repo}/issues/{{number}}/comments", self._create_comment)
        self.route("PATCH", f"{repo}/issues/comments/{{cid}}", self._update_comment)

    # --- set-up helpers ------------------------------------------------------------

    def uid(self, login: str) -> int:
        return self._uids.setdefault(login, 100 + len(self._uids))

    def add_pull_request(
        self,
        number: int,
        *,
        author: str,
        head_sha: str,
        merged: bool = True,
        merge_commit_sha: str | None = None,
        base: str = "main",
        head_ref: str | None = None,
        title: str | None = None,
        labels: Sequence[str] = (),
        state: str | None = None,
        commits: int | None = None,
    ) -> dict[str, Any]:
        """A pull request; also links its head and merge commit to it."""
        owner = self.repository.split("/")[0]
        head_ref = head_ref or f"topic-{number}"
        pr = {
            "url": f"{self.origin}/repos/{self.repository}/pulls/{number}",
            "id": 5000 + number,
            "node_id": f"PR_{number}",
            "html_url": f"https://github.com/{self.repository}/pull/{number}",
            "number": number,
            "state": state or ("closed" if merged else "open"),
            "locked": False,
            "title": title or f"Change {number}",
            "user": _user(author, self.uid(author)),
            "body": "",
            "labels": [
                {"id": i, "name": n, "color": "f29513", "default": False}
                for i, n in enumerate(labels)
            ],
            "created_at": iso(T0),
            "updated_at": iso(T0),
            "closed_at": iso(T0 + timedelta(hours=2)) if merged else None,
            "merged_at": iso(T0 + timedelta(hours=2)) if merged else None,
            "merge_commit_sha": merge_commit_sha,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": {"label": f"{owner}:{head_ref}", "ref": head_ref, "sha": head_sha},
            "base": {"label": f"{owner}:{base}", "ref": base, "sha": "b" * 40},
            "author_association": "MEMBER",
            "auto_merge": None,
            "draft": False,
            # full-object extras (GET pulls/{n})
            "merged": merged,
            "mergeable": None,
            "merged_by": _user("merger", self.uid("merger")) if merged else None,
            "comments": 0,
            "review_comments": 0,
            "commits": commits,
        }
        self.pulls[number] = pr
        self.reviews.setdefault(number, [])
        self.pr_commits.setdefault(number, [])
        for sha in (head_sha, merge_commit_sha):
            if sha:
                self.link_commit(sha, number)
        return pr

    def adopt(self, sha: str, *, approve: Sequence[str], number: int = 100) -> None:
        """`sha`, already on the default branch, as a pull request by dave merged by
        fast-forward and approved by `approve` (a repository set up through review)."""
        self.add_pull_request(number, author="dave", head_sha=sha, merge_commit_sha=sha)
        self.add_commit(number, sha, author="dave")
        for reviewer in approve:
            self.add_review(number, reviewer, "APPROVED", commit_id=sha)

    def link_commit(self, sha: str, *numbers: int) -> None:
        """`GET commits/{sha}/pulls` lists these pull requests."""
        listed = self.commit_pulls.setdefault(sha, [])
        listed.extend(n for n in numbers if n not in listed)

    def add_commit(
        self,
        number: int,
        sha: str,
        *,
        author: str | None,
        committer: str | None = "web-flow",
        author_email: str | None = None,
        committer_email: str | None = None,
        message: str = "Change things",
    ) -> None:
        """A commit of pull request `number`; `author`/`committer` None = no GitHub account."""

        def person(login: str | None, email: str | None) -> dict[str, Any]:
            return {
                "name": login or "Someone",
                "email": email or f"{login or 'someone'}@example.com",
                "date": iso(T0),
            }

        commit: dict[str, Any] = {
            "sha": sha,
            "node_id": f"C_{sha[:8]}",
            "url": f"{self.origin}/repos/{self.repository}/commits/{sha}",
            "html_url": f"https://github.com/{self.repository}/commit/{sha}",
            "commit": {
                "author": person(author, author_email),
                "committer": person(committer, committer_email),
                "message": message,
                "tree": {"sha": "t" * 40},
                "comment_count": 0,
                "verification": {"verified": False, "reason": "unsigned"},
            },
            "author": _user(author, self.uid(author)) if author else None,
            "committer": _user(committer, self.uid(committer)) if committer else None,
            "parents": [],
        }
        self.pr_commits.setdefault(number, []).append(commit)
        self.link_commit(sha, number)
        pr = self.pulls.get(number)
        if pr is not None and pr.get("commits") is None:
            pr["_auto_commits"] = True
        if pr is not None and pr.get("_auto_commits"):
            pr["commits"] = len(self.pr_commits[number])

    def add_review(
        self,
        number: int,
        user: str,
        state: str,
        *,
        commit_id: str | None = None,
        submitted_at: datetime | None = None,
        association: str = "MEMBER",
    ) -> dict[str, Any]:
        """A review, appended in chronological order (times increase by default);
        `association` is the reviewer's `author_association` (MEMBER: can write)."""
        rid = self.next_id()
        review: dict[str, Any] = {
            "id": rid,
            "node_id": f"PRR_{rid}",
            "user": _user(user, self.uid(user)),
            "body": "",
            "state": state,
            "html_url": f"https://github.com/{self.repository}/pull/{number}#pullrequestreview-{rid}",
            "pull_request_url": f"{self.origin}/repos/{self.repository}/pulls/{number}",
            "_links": {},
            "commit_id": commit_id if commit_id is not None else self.pulls[number]["head"]["sha"],
            "author_association": association,
        }
        if state != "PENDING":
            when = submitted_at or (T0 + timedelta(minutes=next(self._clock)))
            review["submitted_at"] = iso(when)
        self.reviews.setdefault(number, []).append(review)
        return review

    def set_membership(self, org: str, team: str, user: str, state: str = "active") -> None:
        """Team membership: "active" or "pending" (absent = 404)."""
        self.memberships[(org.lower(), team.lower(), user.lower())] = state

    def add_comment(self, number: int, body: str, *, user: str = "someone") -> dict[str, Any]:
        cid = self.next_id()
        c = {
            "id": cid,
            "node_id": f"IC_{cid}",
            "url": f"{self.origin}/repos/{self.repository}/issues/comments/{cid}",
            "html_url": f"https://github.com/{self.repository}/pull/{number}#issuecomment-{cid}",
            "body": body,
            "user": _user(user, self.uid(user)),
            "created_at": iso(T0),
            "updated_at": iso(T0),
            "author_association": "MEMBER",
        }
        self.comments.setdefault(number, []).append(c)
        return c

    # --- HTTP ----------------------------------------------------------------------

    def authorized(self, req: Request) -> bool:
        return req.headers.get("authorization") == f"Bearer {self.token}"

    def base_headers(self) -> dict[str, str]:
        return {
            "x-github-api-version-selected": "2022-11-28",
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": "4999",
            "x-ratelimit-reset": "1893456000",
            "x-ratelimit-resource": "core",
        }

    def _repo_ok(self, owner: str, repo: str) -> bool:
        return f"{owner}/{repo}".lower() == self.repository.lower()

    @staticmethod
    def _simple(pr: dict[str, Any]) -> dict[str, Any]:
        full_only = {"merged", "mergeable", "merged_by", "comments", "review_comments", "commits"}
        return {k: v for k, v in pr.items() if k not in full_only and not k.startswith("_")}

    def _commit_pulls(self, req: Request, owner: str, repo: str, sha: str) -> Response:
        if not self._repo_ok(owner, repo):
            return self.not_found()
        if sha not in self.commit_pulls:
            return 422, {"message": f"No commit found for SHA: {sha}"}, {}
        items = [self._simple(self.pulls[n]) for n in self.commit_pulls[sha]]
        page, headers = self.paginate(req, items)
        return 200, page, headers

    def _get_pull(self, req: Request, owner: str, repo: str, number: str) -> Response:
        pr = self.pulls.get(int(number)) if self._repo_ok(owner, repo) else None
        if pr is None:
            return self.not_found()
        full = {k: v for k, v in pr.items() if not k.startswith("_")}
        if full["commits"] is None:
            full["commits"] = len(self.pr_commits.get(int(number), []))
        return 200, full, {}

    def _list_pulls(self, req: Request, owner: str, repo: str) -> Response:
        if not self._repo_ok(owner, repo):
            return self.not_found()
        items = [
            self._simple(p)
            for p in self.pulls.values()
            if ("head" not in req.query or p["head"]["label"] == req.query["head"])
            and ("base" not in req.query or p["base"]["ref"] == req.query["base"])
            and (req.query.get("state", "open") in ("all", p["state"]))
        ]
        page, headers = self.paginate(req, items)
        return 200, page, headers

    def _list_reviews(self, req: Request, owner: str, repo: str, number: str) -> Response:
        if not self._repo_ok(owner, repo) or int(number) not in self.pulls:
            return self.not_found()
        page, headers = self.paginate(req, self.reviews[int(number)])
        return 200, page, headers

    def _list_commits(self, req: Request, owner: str, repo: str, number: str) -> Response:
        if not self._repo_ok(owner, repo) or int(number) not in self.pulls:
            return self.not_found()
        page, headers = self.paginate(req, self.pr_commits[int(number)][:250])
        return 200, page, headers

    def _membership(self, req: Request, org: str, team: str, user: str) -> Response:
        state = self.memberships.get((org.lower(), team.lower(), user.lower()))
        if state is None:
            return self.not_found()
        return (
            200,
            {
                "url": f"{self.origin}/teams/1/memberships/{user}",
                "role": "member",
                "state": state,
            },
            {},
        )

    def _create_status(self, req: Request, owner: str, repo: str, sha: str) -> Response:
        if not self._repo_ok(owner, repo):
            return self.not_found()
        body = req.body if isinstance(req.body, dict) else {}
        if body.get("state") not in ("error", "failure", "pending", "success"):
            return 422, {"message": "Validation Failed", "errors": [{"field": "state"}]}, {}
        if len(body.get("description") or "") > 140:
            return (
                422,
                {
                    "message": "Validation Failed",
                    "errors": [
                        {
                            "resource": "Status",
                            "code": "custom",
                            "field": "description",
                            "message": "description is too long (maximum is 140 characters)",
                        }
                    ],
                },
                {},
            )
        status = {
            "id": self.next_id(),
            "sha": sha,
            "state": body["state"],
            "description": body.get("description"),
            "target_url": body.get("target_url"),
            "context": body.get("context") or "default",
            "creator": _user(self.BOT, self.uid(self.BOT)),
        }
        self.statuses.append(status)
        return 201, status, {"location": f"{self.origin}/repos/{owner}/{repo}/statuses/{sha}"}

    def _list_comments(self, req: Request, owner: str, repo: str, number: str) -> Response:
        if not self._repo_ok(owner, repo):
            return self.not_found()
        page, headers = self.paginate(req, self.comments.get(int(number), []))
        return 200, page, headers

    def _get_repo(self, req: Request, owner: str, repo: str) -> Response:
        if not self._repo_ok(owner, repo):
            return self.not_found()
        return 200, {
            "id": 1, "name": repo, "full_name": f"{owner}/{repo}", "private": True,
            "default_branch": self.default_branch,
        }, {}  # fmt: skip

    def _get_me(self, req: Request) -> Response:
        if self.me is None:
            return 403, {"message": "Resource not accessible by integration"}, {}
        return 200, _user(self.me, self.uid(self.me)), {}

    def _create_comment(self, req: Request, owner: str, repo: str, number: str) -> Response:
        body = req.body if isinstance(req.body, dict) else {}
        if not self._repo_ok(owner, repo) or not body.get("body"):
            return 422, {"message": "Validation Failed"}, {}
        c = self.add_comment(int(number), body["body"], user=self.me or self.BOT)
        return 201, c, {"location": c["url"]}

    def _update_comment(self, req: Request, owner: str, repo: str, cid: str) -> Response:
        body = req.body if isinstance(req.body, dict) else {}
        for comments in self.comments.values():
            for c in comments:
                if c["id"] == int(cid):
                    c["body"] = body.get("body", c["body"])
                    c["updated_at"] = iso(T0 + timedelta(days=1))
                    return 200, c, {}
        return self.not_found()

    def _create_pull(self, req: Request, owner: str, repo: str) -> Response:
        body = req.body if isinstance(req.body, dict) else {}
        if not self._repo_ok(owner, repo):
            return self.not_found()
        head, base = str(body.get("head") or ""), str(body.get("base") or "")
        if not head or not base or not body.get("title"):
            return 422, {"message": "Validation Failed"}, {}
        label = head if ":" in head else f"{owner}:{head}"
        for p in self.pulls.values():
            if p["state"] == "open" and p["head"]["label"] == label and p["base"]["ref"] == base:
                return (
                    422,
                    {
                        "message": "Validation Failed",
                        "errors": [
                            {
                                "resource": "PullRequest",
                                "code": "custom",
                                "message": f"A pull request already exists for {label}.",
                            }
                        ],
                    },
                    {},
                )
        number = max(self.pulls, default=0) + 1
        pr = self.add_pull_request(
            number,
            author=self.BOT,
            head_sha="f" * 40,
            merged=False,
            base=base,
            head_ref=head.split(":")[-1],
            title=str(body["title"]),
        )
        pr["body"] = body.get("body")
        return 201, {k: v for k, v in pr.items() if not k.startswith("_")}, {}


def sha_of(text: str) -> str:
    """A stable fake 40-hex commit id."""
    return hashlib.sha1(text.encode()).hexdigest()
