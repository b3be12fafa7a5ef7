"""A fake GitLab REST API (v4) for one project: merge requests, commits, approvals, diff
versions, reviewers, users (bots too), project members, groups with subgroups and their
members, the project's approval settings, commit statuses, notes, MR creation.

    with FakeGitLab() as gl:
        gl.add_merge_request(3, author="bob", sha=HEAD, merge_commit_sha=MERGE)
        gl.approve(3, "alice", approved_at=...)         # alice: a Developer by default
        gl.set_member("acme/ml-leads/infra", "carol")   # creates acme, acme/ml-leads too
        source = GitLabSource(gl.url, gl.token, gl.project_path)

Shapes follow GitLab's REST docs: members (`/members/:user_id` direct only,
`/members/all/:user_id` inherited from ancestor groups too), `descendant_groups`,
`GET /user`, `GET /users/:id` (`public_email`, `bot`), `GET /projects/:id/approvals`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from .forge import T0, FakeForge, Request, Response, iso

#: GitLab's access levels (members API).
GUEST, REPORTER, DEVELOPER, MAINTAINER, OWNER = 10, 20, 30, 40, 50
_BOT_NAME = re.compile(r"^(project|group)_\d+_bot")


class FakeGitLab(FakeForge):
    prefix = ("api", "v4")

    def __init__(
        self,
        project_path: str = "acme/manifests",
        project_id: int = 42,
        token: str = "glpat-FAKEtoken5678",
    ) -> None:
        super().__init__()
        self.project_path = project_path
        self.project_id = project_id
        self.token = token
        self.mrs: dict[int, dict[str, Any]] = {}
        self.mr_commits: dict[int, list[dict[str, Any]]] = {}
        self.approvals: dict[int, list[dict[str, Any]]] = {}
        self.versions: dict[int, list[dict[str, Any]]] = {}
        self.reviewers: dict[int, list[dict[str, Any]]] = {}
        self.commit_mrs: dict[str, list[int]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        #: Groups by lower-cased full path; members are direct members of each.
        self.groups: dict[str, dict[str, Any]] = {}
        self.group_members: dict[tuple[str, int], dict[str, Any]] = {}
        #: Effective access to the project (direct or through its groups), by user id.
        self.project_members: dict[int, dict[str, Any]] = {}
        #: The token's own user (`GET /user`): a project access token's bot user.
        self.me = f"project_{project_id}_bot_0a1b2c"
        self.statuses: list[dict[str, Any]] = []
        self.notes: dict[int, list[dict[str, Any]]] = {}
        #: Older GitLab: no `approved_at` in approvals, no reviewers endpoint.
        self.approved_at_supported = True
        self.reviewers_supported = True
        #: None = `GET /projects/:id/approvals` answers 403 (a Free-tier project).
        self.reset_approvals_on_push: bool | None = False
        #: `merge_requests_author_approval` False is "Prevent approval by author" (on by
        #: default); `merge_requests_disable_committers_approval` True is "Prevent
        #: approvals by users who add commits" (off by default).
        self.merge_requests_author_approval = False
        self.merge_requests_disable_committers_approval = False
        self.default_branch = "main"
        p = "projects/{project}"
        mr = f"{p}/merge_requests/{{iid}}"
        self.route("GET", p, self._get_project)
        self.route("GET", f"{p}/repository/commits/{{sha}}/merge_requests", self._commit_mrs)
        self.route("GET", mr, self._get_mr)
        self.route("GET", f"{mr}/commits", self._list_commits)
        self.route("GET", f"{mr}/approvals", self._get_approvals)
        self.route("GET", f"{mr}/versions", self._list_versions)
        self.route("GET", f"{mr}/reviewers", self._list_reviewers)
        self.route("GET", f"{mr}/notes", self._list_notes)
        self.route("POST", f"{mr}/notes", self._create_note)
        self.route("PUT", f"{mr}/notes/{{nid}}", self._update_note)
        self.route("GET", f"{p}/approvals", self._project_approvals)
        self.route("GET", f"{p}/merge_requests", self._list_mrs)
        self.route("POST", f"{p}/merge_requests", self._create_mr)
        self.route("POST", f"{p}/statuses/{{sha}}", self._create_status)
        self.route("GET", f"{p}/members/all/{{uid}}", self._project_member)
        self.route("GET", "user", self._get_me)
        self.route("GET", "users", self._find_users)
        self.route("GET", "users/{uid}", self._get_user)
        self.route("GET", "groups/{group}/members/{uid}", self._group_member)
        self.route("GET", "groups/{group}/members/all/{uid}", self._group_member_all)
        self.route("GET", "groups/{group}/descendant_groups", self._descendant_groups)

    # --- set-up helpers ------------------------------------------------------------

    def user(
        self, username: str, *, public_email: str | None = None, bot: bool | None = None
    ) -> dict[str, Any]:
        """The user `GET /users/:id` shows: `public_email` is empty unless set (GitLab's
        default: commit emails are private); `bot` for project/group token bots."""
        u = self.users.get(username)
        if u is None:
            uid = 200 + len(self.users)
            u = {
                "id": uid,
                "username": username,
                "name": username.title(),
                "state": "active",
                "locked": False,
                "avatar_url": None,
                "web_url": f"https://gitlab.example.com/{username}",
                "created_at": iso(T0 - timedelta(days=400)),
                "bio": "",
                "location": "",
                "public_email": "",
                "linkedin": "",
                "twitter": "",
                "website_url": "",
                "organization": "",
                "job_title": "",
                "bot": bool(_BOT_NAME.match(username)),
                "work_information": None,
            }
            self.users[username] = u
        if public_email is not None:
            u["public_email"] = public_email
        if bot is not None:
            u["bot"] = bot
        return u

    def enforce_four_eyes(self, on: bool = True) -> None:
        """The project's "Prevent approval by author" and "Prevent approvals by users
        who add commits" settings."""
        self.merge_requests_author_approval = not on
        self.merge_requests_disable_committers_approval = on

    def set_access(
        self, username: str, access_level: int | None, *, membership_state: str = "active"
    ) -> None:
        """`username`'s effective access to the project (None: not a member)."""
        uid = self.user(username)["id"]
        if access_level is None:
            self.project_members.pop(uid, None)
            return
        self.project_members[uid] = self._member(username, access_level, membership_state)

    def _member(self, username: str, access_level: int, membership_state: str) -> dict[str, Any]:
        return {
            **self._brief(username),
            "access_level": access_level,
            "created_at": iso(T0 - timedelta(days=30)),
            "expires_at": None,
            "membership_state": membership_state,
            "group_saml_identity": None,
        }

    def add_group(self, full_path: str) -> dict[str, Any]:
        """A group and (first) its ancestors, by full path (`acme/ml-leads/infra`)."""
        key = full_path.lower()
        if key in self.groups:
            return self.groups[key]
        parent = self.add_group(full_path.rsplit("/", 1)[0]) if "/" in full_path else None
        gid = 300 + len(self.groups)
        name = full_path.rsplit("/", 1)[-1]
        group = {
            "id": gid,
            "web_url": f"https://gitlab.example.com/groups/{full_path}",
            "name": name,
            "path": name,
            "description": "",
            "visibility": "private",
            "share_with_group_lock": False,
            "require_two_factor_authentication": False,
            "two_factor_grace_period": 48,
            "project_creation_level": "developer",
            "auto_devops_enabled": None,
            "subgroup_creation_level": "maintainer",
            "emails_disabled": None,
            "mentions_disabled": None,
            "lfs_enabled": True,
            "default_branch_protection": 2,
            "avatar_url": None,
            "request_access_enabled": False,
            "full_name": " / ".join(p.title() for p in full_path.split("/")),
            "full_path": full_path,
            "file_template_project_id": None,
            "parent_id": parent["id"] if parent else None,
            "created_at": iso(T0 - timedelta(days=365)),
        }
        self.groups[key] = group
        return group

    def _brief(self, username: str) -> dict[str, Any]:
        u = self.user(username)
        return {k: u[k] for k in ("id", "username", "name", "state", "avatar_url", "web_url")}

    def add_merge_request(
        self,
        iid: int,
        *,
        author: str,
        sha: str,
        merged: bool = True,
        merge_commit_sha: str | None = None,
        squash_commit_sha: str | None = None,
        target_branch: str = "main",
        source_branch: str | None = None,
        labels: Sequence[str] = (),
        title: str | None = None,
        pushed_at: datetime | None = None,
    ) -> dict[str, Any]:
        """A merge request whose head `sha` was pushed at `pushed_at` (one diff version)."""
        mr = {
            "id": 9000 + iid,
            "iid": iid,
            "project_id": self.project_id,
            "title": title or f"Change {iid}",
            "description": "",
            "state": "merged" if merged else "opened",
            "created_at": iso(T0),
            "updated_at": iso(T0 + timedelta(hours=3)),
            "merged_at": iso(T0 + timedelta(hours=3)) if merged else None,
            "merged_by": self._brief("merger") if merged else None,
            "target_branch": target_branch,
            "source_branch": source_branch or f"topic-{iid}",
            "author": self._brief(author),
            "labels": list(labels),
            "draft": False,
            "sha": sha,
            "merge_commit_sha": merge_commit_sha,
            "squash_commit_sha": squash_commit_sha,
            "web_url": f"https://gitlab.example.com/{self.project_path}/-/merge_requests/{iid}",
        }
        self.mrs[iid] = mr
        self.mr_commits.setdefault(iid, [])
        self.approvals.setdefault(iid, [])
        self.reviewers.setdefault(iid, [])
        self.versions[iid] = []
        self.push(iid, sha, at=pushed_at or T0)
        for s in (sha, merge_commit_sha, squash_commit_sha):
            if s:
                self.link_commit(s, iid)
        return mr

    def push(self, iid: int, sha: str, *, at: datetime) -> None:
        """A new diff version (GitLab makes one per push); the MR's head becomes `sha`."""
        vid = self.next_id()
        self.versions[iid].insert(
            0,
            {
                "id": vid,
                "head_commit_sha": sha,
                "base_commit_sha": "b" * 40,
                "start_commit_sha": "b" * 40,
                "created_at": iso(at),
                "merge_request_id": 9000 + iid,
                "state": "collected",
                "real_size": "1",
                "patch_id_sha": "p" * 40,
            },
        )
        self.mrs[iid]["sha"] = sha
        self.link_commit(sha, iid)

    def link_commit(self, sha: str, *iids: int) -> None:
        listed = self.commit_mrs.setdefault(sha, [])
        listed.extend(i for i in iids if i not in listed)

    def add_commit(
        self,
        iid: int,
        sha: str,
        *,
        author_email: str,
        committer_email: str | None = None,
        message: str = "Change things",
    ) -> None:
        self.mr_commits.setdefault(iid, []).insert(
            0,
            {
                "id": sha,
                "short_id": sha[:8],
                "created_at": iso(T0),
                "parent_ids": [],
                "title": message.splitlines()[0],
                "message": message,
                "author_name": author_email.split("@")[0],
                "author_email": author_email,
                "authored_date": iso(T0),
                "committer_name": (committer_email or author_email).split("@")[0],
                "committer_email": committer_email or author_email,
                "committed_date": iso(T0),
                "trailers": {},
                "web_url": f"https://gitlab.example.com/{self.project_path}/-/commit/{sha}",
            },
        )
        self.link_commit(sha, iid)

    def approve(
        self,
        iid: int,
        username: str,
        *,
        approved_at: datetime | None = None,
        access_level: int | None = DEVELOPER,
    ) -> None:
        """An approval; `access_level` sets the approver's access to the project (a
        Developer by default: who approves can usually push), None leaves it as it is."""
        if access_level is not None:
            self.set_access(username, access_level)
        self.approvals[iid].append(
            {
                "user": self._brief(username),
                "approved_at": iso(approved_at or T0 + timedelta(hours=1)),
            }
        )

    def set_reviewer(self, iid: int, username: str, state: str) -> None:
        """Reviewer state: unreviewed, reviewed, requested_changes, approved, unapproved."""
        self.reviewers[iid] = [r for r in self.reviewers[iid] if r["user"]["username"] != username]
        self.reviewers[iid].append(
            {"user": self._brief(username), "state": state, "created_at": iso(T0)}
        )

    def set_member(
        self,
        group: str,
        username: str,
        *,
        membership_state: str = "active",
        access_level: int = DEVELOPER,
    ) -> None:
        """A direct member of `group` (full path; created with its ancestors):
        membership_state "active" or "awaiting"."""
        self.add_group(group)
        u = self.user(username)
        self.group_members[(group.lower(), u["id"])] = self._member(
            username, access_level, membership_state
        )

    # --- HTTP ----------------------------------------------------------------------

    def authorized(self, req: Request) -> bool:
        return req.headers.get("private-token") == self.token

    def unauthorized(self) -> Response:
        return 401, {"message": "401 Unauthorized"}, {}

    def not_found(self) -> Response:
        return 404, {"message": "404 Not Found"}, {}

    def base_headers(self) -> dict[str, str]:
        return {"ratelimit-limit": "2000", "ratelimit-remaining": "1999"}

    def _project_ok(self, project: str) -> bool:
        return project in (str(self.project_id), self.project_path)

    def _page(self, req: Request, items: Sequence[Any]) -> Response:
        chunk, headers = self.paginate(req, items, default=20)
        per_page = max(1, min(100, int(req.query.get("per_page") or 20)))
        page = max(1, int(req.query.get("page") or 1))
        pages = max(1, -(-len(items) // per_page))
        headers.update(
            {
                "x-page": str(page),
                "x-per-page": str(per_page),
                "x-total": str(len(items)),
                "x-total-pages": str(pages),
                "x-next-page": str(page + 1) if page < pages else "",
                "x-prev-page": str(page - 1) if page > 1 else "",
            }
        )
        return 200, chunk, headers

    def _mr(self, project: str, iid: str) -> dict[str, Any] | None:
        if not self._project_ok(project):
            return None
        return self.mrs.get(int(iid))

    def _commit_mrs(self, req: Request, project: str, sha: str) -> Response:
        if not self._project_ok(project):
            return self.not_found()
        return self._page(req, [self.mrs[i] for i in self.commit_mrs.get(sha, [])])

    def _get_mr(self, req: Request, project: str, iid: str) -> Response:
        mr = self._mr(project, iid)
        return (200, mr, {}) if mr else self.not_found()

    def _list_commits(self, req: Request, project: str, iid: str) -> Response:
        if self._mr(project, iid) is None:
            return self.not_found()
        return self._page(req, self.mr_commits[int(iid)])

    def _get_approvals(self, req: Request, project: str, iid: str) -> Response:
        mr = self._mr(project, iid)
        if mr is None:
            return self.not_found()
        approved_by = [
            a if self.approved_at_supported else {"user": a["user"]}
            for a in self.approvals[int(iid)]
        ]
        return (
            200,
            {
                "id": mr["id"],
                "iid": mr["iid"],
                "project_id": self.project_id,
                "title": mr["title"],
                "description": "",
                "state": mr["state"],
                "created_at": mr["created_at"],
                "updated_at": mr["updated_at"],
                "merge_status": "can_be_merged",
                "approved": bool(approved_by),
                "approvals_required": 0,
                "approvals_left": 0,
                "approved_by": approved_by,
            },
            {},
        )

    def _list_versions(self, req: Request, project: str, iid: str) -> Response:
        if self._mr(project, iid) is None:
            return self.not_found()
        return self._page(req, self.versions[int(iid)])

    def _list_reviewers(self, req: Request, project: str, iid: str) -> Response:
        if self._mr(project, iid) is None or not self.reviewers_supported:
            return self.not_found()
        return 200, self.reviewers[int(iid)], {}

    def _get_project(self, req: Request, project: str) -> Response:
        if not self._project_ok(project):
            return self.not_found()
        return 200, {"id": 42, "path_with_namespace": "acme/manifests",
                     "default_branch": self.default_branch}, {}  # fmt: skip

    def _project_approvals(self, req: Request, project: str) -> Response:
        if not self._project_ok(project):
            return self.not_found()
        if self.reset_approvals_on_push is None:
            return 403, {"message": "403 Forbidden"}, {}
        return (
            200,
            {
                "approvers": [],
                "approver_groups": [],
                "approvals_before_merge": 0,
                "reset_approvals_on_push": self.reset_approvals_on_push,
                "selective_code_owner_removals": False,
                "disable_overriding_approvers_per_merge_request": False,
                "merge_requests_author_approval": self.merge_requests_author_approval,
                "merge_requests_disable_committers_approval": (
                    self.merge_requests_disable_committers_approval
                ),
                "require_password_to_approve": False,
            },
            {},
        )

    def _find_users(self, req: Request) -> Response:
        name = req.query.get("username", "")
        found = [self._brief(u) for u in self.users if u.lower() == name.lower()]
        return 200, found, {}

    def _get_user(self, req: Request, uid: str) -> Response:
        for u in self.users.values():
            if str(u["id"]) == uid:
                return 200, dict(u), {}
        return self.not_found()

    def _group(self, ref: str) -> dict[str, Any] | None:
        """A group by id or full path (the API takes either)."""
        if ref.isdigit():
            return next((g for g in self.groups.values() if g["id"] == int(ref)), None)
        return self.groups.get(ref.lower())

    def _group_member(self, req: Request, group: str, uid: str) -> Response:
        """Direct members only."""
        g = self._group(group)
        if g is None or not uid.isdigit():
            return self.not_found()
        member = self.group_members.get((g["full_path"].lower(), int(uid)))
        return (200, member, {}) if member else self.not_found()

    def _group_member_all(self, req: Request, group: str, uid: str) -> Response:
        """Direct and inherited from ancestor groups: the highest access level."""
        g = self._group(group)
        if g is None or not uid.isdigit():
            return self.not_found()
        found = []
        path = g["full_path"].lower()
        while True:
            member = self.group_members.get((path, int(uid)))
            if member:
                found.append(member)
            if "/" not in path:
                break
            path = path.rsplit("/", 1)[0]
        if not found:
            return self.not_found()
        return 200, max(found, key=lambda m: m["access_level"]), {}

    def _descendant_groups(self, req: Request, group: str) -> Response:
        g = self._group(group)
        if g is None:
            return self.not_found()
        prefix = g["full_path"].lower() + "/"
        return self._page(req, [d for k, d in self.groups.items() if k.startswith(prefix)])

    def _project_member(self, req: Request, project: str, uid: str) -> Response:
        if not self._project_ok(project) or not uid.isdigit():
            return self.not_found()
        member = self.project_members.get(int(uid))
        return (200, member, {}) if member else self.not_found()

    def _get_me(self, req: Request) -> Response:
        return 200, dict(self.user(self.me)), {}

    def _create_status(self, req: Request, project: str, sha: str) -> Response:
        if not self._project_ok(project):
            return self.not_found()
        body = req.body if isinstance(req.body, dict) else {}
        if body.get("state") not in ("pending", "running", "success", "failed", "canceled"):
            return 400, {"error": "state does not have a valid value"}, {}
        status = {
            "id": self.next_id(),
            "sha": sha,
            "status": body["state"],
            "name": body.get("name") or "default",
            "description": body.get("description"),
            "target_url": body.get("target_url"),
            "created_at": iso(T0),
        }
        self.statuses.append(status)
        return 201, status, {}

    def add_note(
        self, iid: int, body: str, *, author: str = "someone", system: bool = False
    ) -> dict[str, Any]:
        note = {
            "id": self.next_id(),
            "body": body,
            "author": self._brief(author),
            "created_at": iso(T0),
            "updated_at": iso(T0),
            "system": system,
            "noteable_type": "MergeRequest",
            "noteable_iid": iid,
        }
        self.notes.setdefault(iid, []).append(note)
        return note

    def _list_notes(self, req: Request, project: str, iid: str) -> Response:
        if self._mr(project, iid) is None:
            return self.not_found()
        return self._page(req, self.notes.get(int(iid), []))

    def _create_note(self, req: Request, project: str, iid: str) -> Response:
        body = req.body if isinstance(req.body, dict) else {}
        if self._mr(project, iid) is None:
            return self.not_found()
        if not body.get("body"):
            return 400, {"error": "body is missing"}, {}
        return 201, self.add_note(int(iid), body["body"], author=self.me), {}

    def _update_note(self, req: Request, project: str, iid: str, nid: str) -> Response:
        body = req.body if isinstance(req.body, dict) else {}
        for n in self.notes.get(int(iid), []) if self._mr(project, iid) else []:
            if n["id"] == int(nid):
                n["body"] = body.get("body", n["body"])
                return 200, n, {}
        return self.not_found()

    def _list_mrs(self, req: Request, project: str) -> Response:
        if not self._project_ok(project):
            return self.not_found()
        q = req.query
        items = [
            m
            for m in self.mrs.values()
            if q.get("state", "all") in ("all", m["state"])
            and q.get("source_branch", m["source_branch"]) == m["source_branch"]
            and q.get("target_branch", m["target_branch"]) == m["target_branch"]
        ]
        return self._page(req, items)

    def _create_mr(self, req: Request, project: str) -> Response:
        body = req.body if isinstance(req.body, dict) else {}
        if not self._project_ok(project):
            return self.not_found()
        src, dst = body.get("source_branch"), body.get("target_branch")
        if not src or not dst or not body.get("title"):
            return 400, {"error": "source_branch, target_branch, title are missing"}, {}
        for m in self.mrs.values():
            if m["state"] == "opened" and m["source_branch"] == src and m["target_branch"] == dst:
                return (
                    409,
                    {
                        "message": [
                            "Another open merge request already exists for this source "
                            f"branch: !{m['iid']}"
                        ]
                    },
                    {},
                )
        iid = max(self.mrs, default=0) + 1
        mr = self.add_merge_request(
            iid,
            author=self.me,
            sha="f" * 40,
            merged=False,
            target_branch=dst,
            source_branch=src,
            title=body["title"],
        )
        mr["description"] = body.get("description") or ""
        return 201, mr, {}
