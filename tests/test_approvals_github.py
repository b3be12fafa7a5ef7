"""GitHubSource against a fake GitHub REST API on 127.0.0.1, and the gate end to end."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# tests/ is not a package: pytest puts tests/ itself on sys.path.
from fakes.forge import FakeGitHub, sha_of

from reconciler.approvals import ApprovalPolicy, ApprovalSource, Verdict, evaluate
from reconciler.errors import ApprovalSourceError, ConfigError
from reconciler.forge import ForgeSource
from reconciler.forge.github import GitHubSource

HEAD = sha_of("head")
OLD = sha_of("old")
MERGE = sha_of("merge")
NOW = 1_900_000_000.0


@dataclass
class Waits:
    """The injected sleep and clock: records waits, advances time, never sleeps."""

    now: float = NOW
    slept: list[float] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        yield fake


@pytest.fixture
def waits() -> Waits:
    return Waits()


def source(gh: FakeGitHub, waits: Waits, *, wire: bool = False, **kw: float) -> GitHubSource:
    """Jitter fixed at its ceiling (rng 1.0), so waits are the backoff's exact bounds.
    The fake answers in-process unless `wire`: then over HTTP on 127.0.0.1, as for
    what only a socket shows (a server dripping bytes) and the end-to-end tests."""
    opts: dict[str, float] = {"max_retries": 3, "max_wait": 120.0, "deadline": 5.0, **kw}
    return GitHubSource(
        gh.url,
        gh.token,
        gh.repository,
        sleep=waits.sleep,
        clock=waits.clock,
        rng=lambda: 1.0,
        deadline=opts["deadline"],
        max_retries=int(opts["max_retries"]),
        max_wait=opts["max_wait"],
        transport=None if wire else gh.transport(),
    )


def merged_pr(gh: FakeGitHub, number: int = 7, *, author: str = "bob") -> None:
    gh.add_pull_request(number, author=author, head_sha=HEAD, merge_commit_sha=MERGE)
    gh.add_commit(number, OLD, author=author)
    gh.add_commit(number, HEAD, author=author)


def gate(src: GitHubSource, policy: dict[str, object], *, risk: str = "low") -> Verdict:
    return evaluate(
        ApprovalPolicy.model_validate(policy),
        src.pull_request_for_commit(MERGE),
        risk=risk,
        is_rollback=False,
        is_member=src.membership,
    )


def test_reads_the_merged_pull_request_of_a_commit(gh: FakeGitHub, waits: Waits) -> None:
    merged_pr(gh)
    gh.pulls[7]["labels"] = [{"id": 1, "name": "risk:high"}]
    gh.add_review(7, "alice", "APPROVED")
    src = source(gh, waits, wire=True)  # end to end: over HTTP on 127.0.0.1
    assert isinstance(src, ApprovalSource) and isinstance(src, ForgeSource)
    f = src.pull_request_for_commit(MERGE)
    assert f is not None
    assert (f.number, f.author, f.head_sha, f.base_ref, f.merged) == (7, "bob", HEAD, "main", True)
    assert f.merge_commit_sha == MERGE and f.labels == ("risk:high",)
    assert [c.sha for c in f.commits] == [OLD, HEAD]
    assert [(r.user, r.state, r.commit_id) for r in f.reviews] == [("alice", "APPROVED", HEAD)]
    assert f.url == "https://github.com/acme/manifests/pull/7"
    for r in gh.requests:
        assert r.headers["x-github-api-version"] == "2022-11-28"
        assert r.headers["accept"] == "application/vnd.github+json"
        assert r.headers["authorization"] == f"Bearer {gh.token}"
    lists = [r for r in gh.requests if r.path.endswith(("/reviews", "/commits", "/pulls"))]
    assert lists and all(r.query["per_page"] == ["100"] for r in lists)


def test_token_is_sent_only_as_a_header(gh: FakeGitHub, waits: Waits) -> None:
    merged_pr(gh)
    src = source(gh, waits)
    src.pull_request_for_commit(MERGE)
    src.set_status(MERGE, "success", "ok")
    src.upsert_comment(7, "plan", "<!-- reconciler:plan -->")
    for r in gh.requests:
        assert gh.token not in r.target
        assert gh.token not in repr(r.body)
        assert [k for k, v in r.headers.items() if gh.token in v] == ["authorization"]


def test_picks_the_pull_request_that_merged_the_commit(gh: FakeGitHub, waits: Waits) -> None:
    gh.add_pull_request(3, author="erin", head_sha=sha_of("h3"), merge_commit_sha=sha_of("m3"))
    gh.add_pull_request(4, author="bob", head_sha=HEAD, merged=False)
    merged_pr(gh, 7)
    gh.link_commit(MERGE, 3, 4, 7)
    f = source(gh, waits).pull_request_for_commit(MERGE)
    assert f is not None and f.number == 7
    # no merge_commit_sha match: the merged one the API lists
    gh.link_commit(sha_of("inside"), 4, 3)
    f = source(gh, waits).pull_request_for_commit(sha_of("inside"))
    assert f is not None and f.number == 3


def test_direct_push_has_no_pull_request_and_is_refused(gh: FakeGitHub, waits: Waits) -> None:
    gh.add_pull_request(4, author="bob", head_sha=HEAD, merged=False)  # open only
    gh.link_commit(MERGE, 4)
    src = source(gh, waits)
    assert src.pull_request_for_commit(MERGE) is None
    v = gate(src, {"required": 1})
    assert not v.passed and v.pull_request is None
    assert gate(src, {"required": 0}).passed


def test_unknown_commit_fails_closed(gh: FakeGitHub, waits: Waits) -> None:
    with pytest.raises(ApprovalSourceError, match=r"422.*No commit found"):
        source(gh, waits).pull_request_for_commit(sha_of("nowhere"))


def test_four_eyes_stale_and_latest_review(gh: FakeGitHub, waits: Waits) -> None:
    merged_pr(gh)
    gh.add_commit(7, sha_of("c3"), author="dave", committer="erin")
    gh.add_review(7, "bob", "APPROVED")  # the author
    gh.add_review(7, "dave", "APPROVED")  # wrote a commit
    gh.add_review(7, "erin", "APPROVED")  # committed one
    gh.add_review(7, "frank", "APPROVED", commit_id=OLD)  # stale
    gh.add_review(7, "grace", "APPROVED")
    gh.add_review(7, "grace", "CHANGES_REQUESTED")  # changed her mind
    gh.add_review(7, "heidi", "CHANGES_REQUESTED")
    gh.add_review(7, "heidi", "APPROVED")  # convinced
    gh.add_review(7, "ivan", "DISMISSED")  # an approval an admin dismissed
    gh.add_review(7, "judy", "APPROVED")
    gh.add_review(7, "judy", "COMMENTED")  # a comment does not withdraw it
    gh.add_review(7, "mallory", "PENDING")  # not submitted
    v = gate(source(gh, waits), {"required": 3})
    assert v.approved_by == ["heidi", "judy"]
    assert dict(v.not_counted) == {
        "bob": "author of the pull request",
        "dave": "committed to the pull request",
        "erin": "committed to the pull request",
        "frank": f"approval is stale (approved {OLD[:7]}, head is {HEAD[:7]})",
        "grace": "changes requested later",
        "ivan": "review dismissed",
    }
    assert not v.passed and v.missing == 1


def test_approvers_and_team_membership(gh: FakeGitHub, waits: Waits) -> None:
    merged_pr(gh)
    gh.set_membership("acme", "ml-leads", "carol", "active")
    gh.set_membership("acme", "ml-leads", "dave", "pending")
    for user in ("carol", "dave", "mallory", "alice"):
        gh.add_review(7, user, "APPROVED")
    src = source(gh, waits)
    v = gate(src, {"required": 3, "approvers": ["alice", "@acme/ml-leads"]})
    assert v.approved_by == ["carol", "alice"]
    assert v.not_counted == [("dave", "team membership pending"), ("mallory", "not an approver")]
    assert (
        src.is_member("acme", "ml-leads", "carol"),
        src.is_member("acme", "ml-leads", "dave"),
    ) == (
        True,
        False,
    )
    assert src.membership("ACME", "ML-Leads", "Carol") == "active"
    # each membership asked once (cached), listed users never
    asked = [r.path for r in gh.calls("GET", r"/memberships/")]
    assert sorted(asked) == [
        "/orgs/acme/teams/ml-leads/memberships/carol",
        "/orgs/acme/teams/ml-leads/memberships/dave",
        "/orgs/acme/teams/ml-leads/memberships/mallory",
    ]


def test_reviews_and_commits_over_several_pages(gh: FakeGitHub, waits: Waits) -> None:
    gh.add_pull_request(7, author="bob", head_sha=HEAD, merge_commit_sha=MERGE)
    for i in range(230):
        gh.add_commit(7, sha_of(f"c{i}"), author="bob" if i else "zed")
    for i in range(240):
        gh.add_review(7, f"user{i}", "COMMENTED")
    gh.add_review(7, "zed", "APPROVED")  # a commit author, only on page 1 of commits
    gh.add_review(7, "alice", "APPROVED")  # on page 3 of reviews
    f = source(gh, waits).pull_request_for_commit(MERGE)
    assert f is not None and len(f.reviews) == 242 and len(f.commits) == 230
    assert f.commits_complete
    pages = [r.query.get("page", ["1"])[0] for r in gh.calls("GET", r"/pulls/7/reviews$")]
    assert pages == ["1", "2", "3"]
    v = evaluate(
        ApprovalPolicy(required=1), f, risk="low", is_rollback=False, is_member=lambda *a: False
    )
    assert v.approved_by == ["alice"] and v.not_counted == [
        ("zed", "committed to the pull request")
    ]


def test_more_commits_than_github_lists_blocks_four_eyes(gh: FakeGitHub, waits: Waits) -> None:
    gh.add_pull_request(7, author="bob", head_sha=HEAD, merge_commit_sha=MERGE, commits=300)
    for i in range(260):
        gh.add_commit(7, sha_of(f"c{i}"), author="bob")
    gh.add_review(7, "alice", "APPROVED")
    f = source(gh, waits).pull_request_for_commit(MERGE)
    assert f is not None and len(f.commits) == 250 and not f.commits_complete
    assert not gate(source(gh, waits), {"required": 1}).passed


def test_by_risk_needs_more_approvals(gh: FakeGitHub, waits: Waits) -> None:
    merged_pr(gh)
    gh.add_review(7, "alice", "APPROVED")
    gh.add_review(7, "carol", "APPROVED")
    src = source(gh, waits)
    assert gate(src, {"required": 1, "byRisk": {"critical": 3}}, risk="high").passed
    v = gate(src, {"required": 1, "byRisk": {"critical": 3}}, risk="critical")
    assert (v.passed, v.required, v.missing) == (False, 3, 1)


def test_rollback_policy(gh: FakeGitHub, waits: Waits) -> None:
    merged_pr(gh)
    gh.add_review(7, "alice", "APPROVED")
    src = source(gh, waits)
    p = ApprovalPolicy.model_validate({"required": 2, "rollback": {"required": 1}})
    f = src.pull_request_for_commit(MERGE)
    assert evaluate(p, f, risk="high", is_rollback=True, is_member=src.membership).passed
    assert not evaluate(p, f, risk="high", is_rollback=False, is_member=src.membership).passed


# --- failures: fail closed, bounded, honouring rate limits -------------------------


def test_api_down_fails_closed_after_bounded_retries(gh: FakeGitHub, waits: Waits) -> None:
    merged_pr(gh)
    gh.down = 502
    with pytest.raises(ApprovalSourceError) as e:
        source(gh, waits, max_retries=3).pull_request_for_commit(MERGE)
    assert "502" in e.value.message and "gave up after 4 attempts" in e.value.message
    assert waits.slept == [1.0, 2.0, 4.0]  # exponential backoff, through the injected sleep
    assert len(gh.requests) == 4


def test_transient_errors_are_retried(gh: FakeGitHub, waits: Waits) -> None:
    merged_pr(gh)
    gh.add_review(7, "alice", "APPROVED")
    gh.fail_next(1, status=500)
    gh.fail_next(1, status="drop")  # connection closed without an answer
    f = source(gh, waits).pull_request_for_commit(MERGE)
    assert f is not None and f.reviews[0].user == "alice"
    assert waits.slept == [1.0, 2.0]


def test_connection_refused_fails_closed(waits: Waits) -> None:
    fake = FakeGitHub().start()
    url, token = fake.url, fake.token
    fake.stop()
    src = GitHubSource(url, token, "acme/manifests", sleep=waits.sleep, max_retries=2)
    with pytest.raises(ApprovalSourceError, match=r"ConnectError.*gave up after 3 attempts"):
        src.pull_request(7)


def test_secondary_rate_limit_waits_retry_after(gh: FakeGitHub, waits: Waits) -> None:
    merged_pr(gh)
    gh.rate_limit_next(1, retry_after=7)
    gh.rate_limit_next(1, retry_after=5, status=403)
    assert source(gh, waits).pull_request_for_commit(MERGE) is not None
    assert waits.slept == [7.0, 5.0]


def test_primary_rate_limit_waits_until_reset(gh: FakeGitHub, waits: Waits) -> None:
    merged_pr(gh)
    gh.quota_exhausted_next(1, reset=int(NOW) + 42)
    assert source(gh, waits).pull_request_for_commit(MERGE) is not None
    assert waits.slept == [43.0]  # until the reset, plus a second of margin


def test_rate_limit_wait_is_bounded(gh: FakeGitHub, waits: Waits) -> None:
    merged_pr(gh)
    gh.quota_exhausted_next(1, reset=int(NOW) + 3600)
    with pytest.raises(ApprovalSourceError, match="over the limit of 120s"):
        source(gh, waits).pull_request_for_commit(MERGE)
    assert waits.slept == []


def test_forbidden_without_rate_limit_is_not_retried(gh: FakeGitHub, waits: Waits) -> None:
    gh.fail_next(1, status=403, body={"message": "Resource not accessible by integration"})
    with pytest.raises(ApprovalSourceError) as e:
        source(gh, waits).membership("acme", "ml-leads", "carol")
    assert "403" in e.value.message and "read:org" in (e.value.details or "")
    assert waits.slept == [] and len(gh.requests) == 1


def test_token_never_appears_in_errors_or_reprs(gh: FakeGitHub, waits: Waits) -> None:
    src = source(gh, waits)
    gh.fail_next(1, status=401, body={"message": f"Bad credentials {gh.token}"})
    with pytest.raises(ApprovalSourceError) as e:
        src.pull_request(7)
    assert "401" in e.value.message and "token was refused" in (e.value.details or "")
    texts = [str(e.value), e.value.message, e.value.details or "", repr(e.value), repr(src)]
    texts += [repr(src._api), repr(vars(src)), repr(vars(src._api))]
    assert all(gh.token not in t for t in texts)
    wrong = GitHubSource(gh.url, "ghp_wrongTOKEN999", gh.repository, sleep=waits.sleep)
    with pytest.raises(ApprovalSourceError) as e2:
        wrong.pull_request(7)
    assert "ghp_wrongTOKEN999" not in str(e2.value) + repr(e2.value) + repr(wrong)


def test_bad_repository_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="owner/name"):
        GitHubSource("http://127.0.0.1:1", "t", "just-a-name")


# --- writing back ------------------------------------------------------------------


def test_set_status_truncates_the_description(gh: FakeGitHub, waits: Waits) -> None:
    src = source(gh, waits)
    src.set_status(MERGE, "failure", "x" * 200, target_url="https://ci.example.com/run/1")
    src.set_status(MERGE, "success", "2/2 approvals", context="reconciler/approvals/prod")
    first, second = gh.statuses
    assert first["state"] == "failure" and len(first["description"]) == 140
    assert first["description"].endswith("…") and first["context"] == "reconciler/approvals"
    assert first["target_url"] == "https://ci.example.com/run/1"
    assert second["context"] == "reconciler/approvals/prod" and second["sha"] == MERGE
    with pytest.raises(ValueError):
        src.set_status(MERGE, "failed", "nope")


def test_upsert_comment_edits_its_own_comment(gh: FakeGitHub, waits: Waits) -> None:
    marker = "<!-- reconciler:plan -->"
    merged_pr(gh)
    for i in range(120):  # the marker comment ends up on the second page
        gh.add_comment(7, f"chatter {i}")
    src = source(gh, waits)
    first = src.upsert_comment(7, "## Plan\n1 change", marker)
    second = src.upsert_comment(7, f"{marker}\n## Plan\n2 changes", marker)
    assert first == second
    mine = [c for c in gh.comments[7] if marker in c["body"]]
    assert len(mine) == 1 and mine[0]["body"] == f"{marker}\n## Plan\n2 changes"
    assert len(gh.calls("POST", r"/comments$")) == 1 and len(gh.calls("PATCH")) == 1


def test_comment_post_is_not_retried_on_server_error(gh: FakeGitHub, waits: Waits) -> None:
    merged_pr(gh)
    src = source(gh, waits)
    gh.fail_next(1, status=502, method="POST", path_re=r"/comments$")
    with pytest.raises(ApprovalSourceError, match="502"):
        src.upsert_comment(7, "body", "<!-- m -->")
    assert len(gh.calls("POST", r"/comments$")) == 1 and waits.slept == []
    # a rate-limited POST was refused, not applied: safe to retry
    gh.rate_limit_next(1, retry_after=2, method="POST")
    src.upsert_comment(7, "body", "<!-- m -->")
    assert len([c for c in gh.comments[7] if "<!-- m -->" in c["body"]]) == 1
    assert waits.slept == [2.0]


def test_open_pull_request_is_idempotent(gh: FakeGitHub, waits: Waits) -> None:
    src = source(gh, waits)
    number, url = src.open_pull_request("rollback-abc", "main", "Roll back abc", "Rollback-Of: abc")
    assert gh.pulls[number]["head"]["ref"] == "rollback-abc" and url.endswith(f"/pull/{number}")
    again = src.open_pull_request("rollback-abc", "main", "Roll back abc", "…")
    assert again == (number, url) and len(gh.pulls) == 1


# --- the total deadline (RECONCILER_FORGE_TIMEOUT) ----------------------------------------


@pytest.mark.parametrize("mode", ["drip-headers", "drip-body"])
def test_a_dripping_forge_hits_the_deadline(gh: FakeGitHub, waits: Waits, mode: str) -> None:
    """One byte every 0.8 s beats a read timeout of 1 s for ever; the deadline ends it."""
    merged_pr(gh)
    gh.down = mode  # type: ignore[assignment]
    src = source(gh, waits, wire=True, deadline=0.3, max_retries=1)
    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            src.pull_request_for_commit(MERGE)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(30)
    assert outcome, "the request outlived its deadline"
    err = outcome[0]
    assert isinstance(err, ApprovalSourceError)
    assert err.message == (
        f"GitHub API: GET /repos/acme/manifests/commits/{MERGE}/pulls: the answer did not "
        "complete within 0.3s (0.3s is the total deadline per request, set by "
        "RECONCILER_FORGE_TIMEOUT); gave up after 2 attempts"
    )
    assert waits.slept == [1.0]


GATED_REPO = {
    "reconciler.yaml": "approvals: {source: github, repository: acme/manifests}\n",
    "manifests/env.yaml": """apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
spec:
  description: gated
  approvals: {required: 1}
""",
    "manifests/provider.yaml": """apiVersion: reconciler/v1
kind: Provider
metadata: {name: local}
spec: {type: local, environments: [production]}
""",
    "manifests/chat.yaml": """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat}
spec: {environments: [production], provider: local, model: gpt-4o-mini}
""",
    ".gitignore": ".reconciler/\n",
}


def test_apply_is_blocked_when_the_forge_drips_past_its_deadline(
    gh: FakeGitHub, tmp_path: Path, waits: Waits, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole command against a forge dripping bytes on 127.0.0.1: each attempt ends
    at the total deadline, and the waits between them go to the injected sleep (the
    command runs in this process), so the test takes the five deadlines, not the
    backoff's seconds."""
    from conftest import commit_all, init_repo, run_cli, write_files

    from reconciler.forge import github

    class Recorded(GitHubSource):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw, sleep=waits.sleep, clock=waits.clock)

    monkeypatch.setattr(github, "GitHubSource", Recorded)
    repo = init_repo(tmp_path / "r")
    write_files(repo, GATED_REPO)
    sha = commit_all(repo, "a change that needs an approval")
    gh.down = "drip-body"
    env = {"GITHUB_TOKEN": gh.token, "GITHUB_API_URL": gh.url, "RECONCILER_FORGE_TIMEOUT": "0.3"}
    # Without a total deadline the gate would wait for ever.
    r = run_cli(["--repo", str(repo), "apply"], env=env)
    out = r.out + r.err
    assert r.code == 3, out
    assert (
        f"cannot read approvals, refusing: GitHub API: GET /repos/acme/manifests/commits/"
        f"{sha}/pulls: the answer did not complete within 0.3s (0.3s is the total deadline "
        "per request, set by RECONCILER_FORGE_TIMEOUT); gave up after 5 attempts"
    ) in out
    assert len(waits.slept) == 4  # backoff between the five attempts
    assert gh.token not in out and "Traceback" not in out
    status = run_cli(["--repo", str(repo), "status", "--json"])
    assert json.loads(status.out) == []
