"""GitLabSource against a fake GitLab v4 API on 127.0.0.1, and the gate end to end."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

# tests/ is not a package: pytest puts tests/ itself on sys.path.
from fakes.forge import T0, sha_of
from fakes.gitlab import FakeGitLab

from reconciler.approvals import ApprovalPolicy, Verdict, evaluate
from reconciler.ci import CiContext, detect
from reconciler.errors import ApprovalSourceError
from reconciler.forge import ForgeSource
from reconciler.forge.gitlab import GitLabSource

HEAD = sha_of("head")
OLD = sha_of("old")
MERGE = sha_of("merge")


class Waits:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


@pytest.fixture
def gl() -> Iterator[FakeGitLab]:
    with FakeGitLab() as fake:
        yield fake


def source(gl: FakeGitLab, waits: Waits | None = None, project: str | None = None) -> GitLabSource:
    return GitLabSource(
        gl.url,
        gl.token,
        project or gl.project_path,
        sleep=(waits or Waits()).sleep,
        rng=lambda: 1.0,  # jitter at its ceiling: waits are the backoff's exact bounds
        max_retries=2,
        max_wait=60,
    )


def merged_mr(gl: FakeGitLab, iid: int = 3, *, author: str = "bob") -> None:
    """Pushed OLD at T0, then HEAD at T0+1h; merged as MERGE."""
    gl.add_merge_request(iid, author=author, sha=OLD, merge_commit_sha=MERGE, pushed_at=T0)
    gl.add_commit(iid, OLD, author_email=f"{author}@example.com")
    gl.push(iid, HEAD, at=T0 + timedelta(hours=1))
    gl.add_commit(iid, HEAD, author_email=f"{author}@example.com")


def gate(src: GitLabSource, policy: dict[str, object], *, rollback: bool = False) -> Verdict:
    return evaluate(
        ApprovalPolicy.model_validate(policy),
        src.pull_request_for_commit(MERGE),
        risk="low",
        is_rollback=rollback,
        is_member=src.membership,
    )


def test_reads_the_merged_merge_request(gl: FakeGitLab) -> None:
    merged_mr(gl)
    gl.mrs[3]["labels"] = ["risk::high"]
    gl.approve(3, "alice", approved_at=T0 + timedelta(hours=2))
    src = source(gl)
    assert isinstance(src, ForgeSource)
    f = src.pull_request_for_commit(MERGE)
    assert f is not None
    assert (f.number, f.author, f.head_sha, f.base_ref, f.merged) == (3, "bob", HEAD, "main", True)
    assert f.labels == ("risk::high",) and f.merge_commit_sha == MERGE
    assert {c.author_email for c in f.commits} == {"bob@example.com"}
    assert [(r.user, r.state, r.commit_id) for r in f.reviews] == [("alice", "APPROVED", HEAD)]
    for r in gl.requests:
        assert r.headers["private-token"] == gl.token
        assert gl.token not in r.target
        assert r.path.startswith("/api/v4/")
    assert gl.requests[0].path == (
        f"/api/v4/projects/acme%2Fmanifests/repository/commits/{MERGE}/merge_requests"
    )


def test_numeric_project_id(gl: FakeGitLab) -> None:
    merged_mr(gl)
    f = source(gl, project="42").pull_request_for_commit(MERGE)
    assert f is not None and f.number == 3


def test_squash_merge_and_direct_push(gl: FakeGitLab) -> None:
    gl.add_merge_request(5, author="bob", sha=HEAD, squash_commit_sha=sha_of("squash"))
    gl.add_merge_request(6, author="bob", sha=sha_of("open"), merged=False)
    gl.link_commit(sha_of("squash"), 6)
    src = source(gl)
    f = src.pull_request_for_commit(sha_of("squash"))
    assert f is not None and f.number == 5
    assert src.pull_request_for_commit(sha_of("open")) is None  # an open MR only
    assert src.pull_request_for_commit(sha_of("pushed")) is None  # no MR at all
    v = evaluate(
        ApprovalPolicy(required=1), None, risk="low", is_rollback=False, is_member=src.membership
    )
    assert not v.passed


def test_four_eyes_freshness_and_requested_changes(gl: FakeGitLab) -> None:
    merged_mr(gl)
    gl.user("bob", public_email="bob@example.com")  # ties bob's commits to bob, the author
    gl.add_commit(3, sha_of("c3"), author_email="1234-dave@users.noreply.gitlab.example.com")
    gl.add_commit(3, sha_of("c4"), author_email="erin.private@example.com")
    gl.user("erin", public_email="Erin.Private@example.com")
    gl.approve(3, "bob", approved_at=T0 + timedelta(hours=2))  # author
    gl.approve(3, "dave", approved_at=T0 + timedelta(hours=2))  # committed (noreply)
    gl.approve(3, "erin", approved_at=T0 + timedelta(hours=2))  # committed (public email)
    gl.approve(3, "frank", approved_at=T0 + timedelta(minutes=30))  # before the last push
    gl.approve(3, "grace", approved_at=T0 + timedelta(hours=2))
    gl.set_reviewer(3, "grace", "requested_changes")  # since then
    gl.approve(3, "heidi", approved_at=T0 + timedelta(hours=2))
    gl.set_reviewer(3, "heidi", "approved")
    v = gate(source(gl), {"required": 2})
    assert v.approved_by == ["heidi"]
    assert dict(v.not_counted) == {
        "bob": "author of the pull request",
        "dave": "committed to the pull request",
        "erin": "committed to the pull request",
        "frank": f"approval is stale (approved {OLD[:7]}, head is {HEAD[:7]})",
        "grace": "changes requested later",
    }
    assert not v.passed and v.missing == 1
    # bob's email private (GitLab's default): his commits are tied to nobody, so who
    # wrote them is unknown and nobody counts ...
    gl.user("bob", public_email="")
    v = gate(source(gl), {"required": 1})
    assert v.approved_by == [] and not v.passed
    assert dict(v.not_counted)["heidi"] == (
        f"commit authors unknown ({HEAD[:7]}, {OLD[:7]} by someone no account is tied to)"
    )
    # ... unless the project refuses approvals by the author and by committers itself
    gl.enforce_four_eyes()
    v = gate(source(gl), {"required": 1})
    assert v.approved_by == ["heidi"] and v.passed


def test_older_gitlab_freshness_from_reset_on_push(gl: FakeGitLab) -> None:
    merged_mr(gl)
    gl.user("bob", public_email="bob@example.com")  # the commits are the author's
    gl.approved_at_supported = False
    gl.reviewers_supported = False
    gl.approve(3, "alice")
    gl.reset_approvals_on_push = True  # GitLab drops approvals on push: what is left is fresh
    assert gate(source(gl), {"required": 1}).passed
    gl.reset_approvals_on_push = False  # approved commit unknown
    v = gate(source(gl), {"required": 1})
    assert v.not_counted == [
        ("alice", f"approval is stale (approved unknown commit, head is {HEAD[:7]})")
    ]
    assert gate(source(gl), {"required": 1, "freshOnly": False}).passed
    gl.reset_approvals_on_push = None  # settings not readable (Free tier): unknown
    v = gate(source(gl), {"required": 1})
    assert not v.passed
    assert v.not_counted == [
        ("alice", f"approval is stale (approved unknown commit, head is {HEAD[:7]})")
    ]


def test_group_membership(gl: FakeGitLab) -> None:
    merged_mr(gl)
    gl.enforce_four_eyes()  # bob's commits have a private email: GitLab guards them
    gl.set_member("acme/ml-leads", "carol")
    gl.set_member("acme/ml-leads", "dave", membership_state="awaiting")
    gl.user("mallory")
    for user in ("carol", "dave", "mallory"):
        gl.approve(3, user, approved_at=T0 + timedelta(hours=2))
    src = source(gl)
    v = gate(src, {"required": 2, "approvers": ["@acme/ml-leads"]})
    assert v.approved_by == ["carol"]
    assert v.not_counted == [("dave", "team membership pending"), ("mallory", "not an approver")]
    assert src.is_member("acme", "ml-leads", "carol") is True
    assert src.membership("acme", "ml-leads", "nobody-at-all") == "none"
    # direct membership only: `members/all` would count members of ancestor groups
    assert gl.calls("GET", r"^/api/v4/groups/acme%2Fml-leads/members/\d+$")
    assert not gl.calls("GET", r"^/api/v4/groups/.*/members/all/")


def test_rollback_policy(gl: FakeGitLab) -> None:
    merged_mr(gl)
    gl.enforce_four_eyes()
    gl.approve(3, "alice", approved_at=T0 + timedelta(hours=2))
    src = source(gl)
    policy = {"required": 2, "rollback": {"required": 1}}
    assert gate(src, policy, rollback=True).passed
    assert not gate(src, policy).passed


def test_api_down_and_rate_limits(gl: FakeGitLab) -> None:
    merged_mr(gl)
    waits = Waits()
    gl.rate_limit_next(1, retry_after=9)
    assert source(gl, waits).pull_request_for_commit(MERGE) is not None
    assert waits.slept == [9.0]
    gl.down = 503
    waits = Waits()
    with pytest.raises(ApprovalSourceError, match=r"GitLab API: GET .*503.*gave up after 3"):
        source(gl, waits).pull_request_for_commit(MERGE)
    assert waits.slept == [1.0, 2.0]


def test_token_never_appears_in_errors_or_reprs(gl: FakeGitLab) -> None:
    src = GitLabSource(gl.url, "glpat-WRONGtoken42", gl.project_path, max_retries=0)
    with pytest.raises(ApprovalSourceError) as e:
        src.pull_request(3)
    assert "401" in e.value.message
    everything = (
        str(e.value) + repr(e.value) + (e.value.details or "") + repr(src) + repr(vars(src))
    )
    assert "glpat-WRONGtoken42" not in everything


def test_status_notes_and_merge_request(gl: FakeGitLab) -> None:
    merged_mr(gl)
    src = source(gl)
    src.set_status(MERGE, "failure", "y" * 300)
    src.set_status(
        MERGE, "success", "ok", context="reconciler/approvals/prod", target_url="https://x"
    )
    assert [(s["status"], s["name"]) for s in gl.statuses] == [
        ("failed", "reconciler/approvals"),
        ("success", "reconciler/approvals/prod"),
    ]
    assert len(gl.statuses[0]["description"]) == 140
    marker = "<!-- reconciler:plan -->"
    gl.add_note(3, f"a system note quoting {marker}", system=True)
    for i in range(30):
        gl.add_note(3, f"chatter {i}")
    first = src.upsert_comment(3, "plan v1", marker)
    second = src.upsert_comment(3, "plan v2", marker)
    assert first == second
    mine = [n for n in gl.notes[3] if marker in n["body"] and not n["system"]]
    assert len(mine) == 1 and mine[0]["body"] == f"{marker}\nplan v2"
    iid, url = src.open_pull_request("rollback-abc", "main", "Roll back", "Rollback-Of: abc")
    assert gl.mrs[iid]["source_branch"] == "rollback-abc" and url.endswith(f"/{iid}")
    assert src.open_merge_request("rollback-abc", "main", "Roll back", "again") == (iid, url)
    assert len([m for m in gl.mrs.values() if m["source_branch"] == "rollback-abc"]) == 1


def test_commits_are_tied_by_the_authors_and_approvers_emails(gl: FakeGitLab) -> None:
    """A commit email the users API shows for the MR's author or an approver ties the
    commit to that account; a private one ties it to nobody."""
    merged_mr(gl)  # bob's commits, bob@example.com
    gl.approve(3, "alice", approved_at=T0 + timedelta(hours=2))
    f = source(gl).pull_request(3)
    assert [c.author_login for c in f.commits] == [None, None]
    assert f.untied_commits() == [HEAD, OLD] and not f.forge_enforces_four_eyes
    gl.user("bob", public_email="Bob@Example.com")
    f = source(gl).pull_request(3)
    assert [c.author_login for c in f.commits] == ["bob", "bob"] and f.untied_commits() == []


def test_gitlab_guards_committers_not_other_authors_or_co_authors(gl: FakeGitLab) -> None:
    """With "Prevent approvals by users who add commits", GitLab names each commit's
    committer itself (private emails too): an untied commit is no risk only when its
    author committed it and it has no untied co-author."""
    merged_mr(gl)
    gl.approve(3, "alice", approved_at=T0 + timedelta(hours=2))
    gl.enforce_four_eyes()
    assert gate(source(gl), {"required": 1}).passed  # bob's own commits, private email
    gl.add_commit(3, sha_of("pick"), author_email="mallory@personal.example",
                  committer_email="bob@example.com")  # fmt: skip
    v = gate(source(gl), {"required": 1})
    assert not v.passed and "commit authors unknown" in v.not_counted[0][1]
    gl.mr_commits[3].pop(0)
    gl.add_commit(3, sha_of("co"), author_email="bob@example.com",
                  message="Fix\n\nCo-authored-by: M <mallory@personal.example>\n")  # fmt: skip
    assert not gate(source(gl), {"required": 1}).passed
    gl.enforce_four_eyes(False)  # GitLab's default: committers may approve
    gl.mr_commits[3].pop(0)
    assert not gate(source(gl), {"required": 1}).passed
    gl.reset_approvals_on_push = None  # settings unreadable (Free tier): enforce nothing
    gl.enforce_four_eyes()
    v = gate(source(gl), {"required": 1, "freshOnly": False})
    assert not v.passed and "commit authors unknown" in v.not_counted[0][1]


def test_bots_and_write_access(gl: FakeGitLab) -> None:
    """With `approvers: []` only Developers and up count (membership through groups is
    real access); GitLab's bot users never count unless listed by name."""
    merged_mr(gl)
    gl.enforce_four_eyes()
    bot = "project_42_bot_9f8e7d"
    when = T0 + timedelta(hours=2)
    gl.approve(3, "dev", approved_at=when)
    gl.approve(3, bot, approved_at=when, access_level=40)
    gl.approve(3, "named-bot", approved_at=when)
    gl.user("named-bot", bot=True)
    gl.approve(3, "rita", approved_at=when, access_level=20)
    gl.approve(3, "nobody", approved_at=when)
    gl.set_access("nobody", None)
    gl.approve(3, "invited", approved_at=when)
    gl.set_access("invited", 30, membership_state="awaiting")
    f = source(gl).pull_request(3)
    assert {r.user: (r.bot, r.write_access) for r in f.reviews} == {
        "dev": (False, True),
        bot: (True, True),
        "named-bot": (True, True),
        "rita": (False, False),
        "nobody": (False, False),
        "invited": (False, False),
    }
    v = gate(source(gl), {"required": 1})
    assert v.approved_by == ["dev"]
    assert dict(v.not_counted) == {
        bot: "a bot (bots count only when listed by name)",
        "named-bot": "a bot (bots count only when listed by name)",
        "rita": "no write access to the repository",
        "nobody": "no write access to the repository",
        "invited": "no write access to the repository",
    }
    listed = gate(source(gl), {"required": 2, "approvers": ["dev", "named-bot"]})
    assert listed.approved_by == ["dev", "named-bot"]
    paths = {r.path for r in gl.calls("GET", r"/members/all/")}
    assert all(p.startswith("/api/v4/projects/acme%2Fmanifests/members/all/") for p in paths)


def test_a_group_means_it_and_its_subgroups_never_its_ancestors(gl: FakeGitLab) -> None:
    merged_mr(gl)
    gl.enforce_four_eyes()
    gl.set_member("acme", "owner-of-acme", access_level=50)
    gl.set_member("acme", "guest-of-acme", access_level=10)
    gl.set_member("acme/ml-leads/infra/gpu", "deep")
    gl.set_member("acme/ml-leads/infra", "later", membership_state="awaiting")
    gl.set_member("acme/other", "sibling")
    src = source(gl)
    assert src.membership("acme", "ml-leads", "owner-of-acme") == "none"
    assert src.membership("acme", "ml-leads", "guest-of-acme") == "none"
    assert src.membership("acme", "ml-leads", "sibling") == "none"
    assert src.membership("acme", "ml-leads", "deep") == "active"
    assert src.membership("acme", "ml-leads", "later") == "pending"
    assert src.membership("acme", "no-such-group", "deep") == "none"
    for name in ("owner-of-acme", "deep"):
        gl.approve(3, name, approved_at=T0 + timedelta(hours=2))
    v = gate(src, {"required": 1, "approvers": ["@acme/ml-leads"]})
    assert v.approved_by == ["deep"] and v.not_counted == [("owner-of-acme", "not an approver")]
    assert not gl.calls("GET", r"^/api/v4/groups/.*/members/all/")


def test_the_note_upsert_edits_only_the_tokens_own_note(gl: FakeGitLab) -> None:
    merged_mr(gl)
    marker = "<!-- reconciler:plan -->"
    forged = gl.add_note(3, f"{marker}\nship it", author="mallory")
    src = source(gl)
    first = src.upsert_comment(3, "plan v1", marker)
    assert first != forged["id"] and forged["body"] == f"{marker}\nship it"
    assert src.upsert_comment(3, "plan v2", marker) == first
    assert [n["body"] for n in gl.notes[3]] == [f"{marker}\nship it", f"{marker}\nplan v2"]
    assert gl.notes[3][1]["author"]["username"] == gl.me
    gl.fail_next(1, status=401, body={"message": "401 Unauthorized"}, path_re=r"^/api/v4/user$")
    third = source(gl).upsert_comment(3, "plan v3", marker)  # who am I? unknown: never edit
    assert third not in (first, forged["id"]) and len(gl.notes[3]) == 3


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"CI_COMMIT_SHA": "c" * 40}, CiContext(commit="c" * 40)),
        (
            {"CI_COMMIT_SHA": "c" * 40, "CI_MERGE_REQUEST_IID": "7"},
            CiContext(commit="c" * 40, pull_request=7, head_sha="c" * 40),
        ),
        (
            {
                "CI_COMMIT_SHA": "m" * 40,
                "CI_MERGE_REQUEST_IID": "7",
                "CI_MERGE_REQUEST_EVENT_TYPE": "merged_result",
                "CI_MERGE_REQUEST_SOURCE_BRANCH_SHA": "h" * 40,
            },
            CiContext(commit="h" * 40, pull_request=7, head_sha="h" * 40),
        ),
        (
            {
                "CI_COMMIT_SHA": "m" * 40,
                "CI_MERGE_REQUEST_IID": "7",
                "CI_MERGE_REQUEST_EVENT_TYPE": "merge_train",
            },
            CiContext(pull_request=7),
        ),
    ],
    ids=["push", "detached", "merged-results", "merge-train-without-head"],
)
def test_ci_context_in_gitlab_pipelines(env: dict[str, str], expected: CiContext) -> None:
    """In merged-results and merge-train pipelines CI_COMMIT_SHA is a temporary merge
    commit: the MR's head is CI_MERGE_REQUEST_SOURCE_BRANCH_SHA, or unknown."""
    assert detect({"GITLAB_CI": "true", **env}) == expected


def test_merge_requests_for_a_commit_and_the_default_branch(gl: FakeGitLab) -> None:
    """Every MR GitLab associates with a commit, merged or not (the gate decides which
    may count), and the project's default branch (the deploy branch by default)."""
    merged_mr(gl)
    gl.add_merge_request(4, author="eve", sha=HEAD, merged=False, target_branch="other")
    gl.default_branch = "production"
    src = source(gl)
    assert sorted(src.pull_requests_for_commit(HEAD)) == [3, 4]
    assert src.pull_requests_for_commit(MERGE) == [3]
    assert src.pull_requests_for_commit(sha_of("pushed")) == []
    assert src.default_branch() == "production"
    assert src.pull_request(4).base_ref == "other" and not src.pull_request(4).merged
