"""The approval rules, on facts built by hand (the forge sources have their own tests)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from reconciler.approvals import (
    ApprovalPolicy,
    CommitFacts,
    PullRequestFacts,
    Review,
    Verdict,
    evaluate,
)
from reconciler.approvals.facts import co_author_emails, noreply_login

HEAD = "d" * 40
OLD = "a" * 40
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def policy(**kw: object) -> ApprovalPolicy:
    return ApprovalPolicy.model_validate(kw)


def review(
    user: str, state: str = "APPROVED", commit: str | None = HEAD, minute: int = 0
) -> Review:
    return Review(user, state, commit, T0 + timedelta(minutes=minute), write_access=True)


def facts(
    *reviews: Review,
    author: str = "bob",
    commits: Sequence[CommitFacts] | None = None,
    complete: bool = True,
) -> PullRequestFacts:
    return PullRequestFacts(
        number=12,
        url="https://github.com/acme/manifests/pull/12",
        title="Bump the model",
        state="closed",
        merged=True,
        author=author,
        head_sha=HEAD,
        base_ref="main",
        commits=tuple(
            commits if commits is not None else [CommitFacts("c" * 40, author_login=author)]
        ),
        reviews=reviews,
        commits_complete=complete,
    )


def teams(members: Mapping[tuple[str, str], Mapping[str, str]]) -> object:
    asked: list[tuple[str, str, str]] = []

    def membership(org: str, team: str, user: str) -> str:
        asked.append((org, team, user))
        return members.get((org, team), {}).get(user, "none")

    membership.asked = asked  # type: ignore[attr-defined]
    return membership


def no_teams(org: str, team: str, user: str) -> bool:
    raise AssertionError("no team lookup expected")


def run(
    p: ApprovalPolicy,
    f: PullRequestFacts | None,
    *,
    risk: str = "low",
    rollback: bool = False,
    is_member: object = no_teams,
) -> Verdict:
    return evaluate(p, f, risk=risk, is_rollback=rollback, is_member=is_member)  # type: ignore[arg-type]


def test_two_independent_approvals_pass() -> None:
    v = run(policy(required=2), facts(review("alice"), review("carol", minute=1)))
    assert v.passed and v.approved_by == ["alice", "carol"] and v.missing == 0
    assert v.pull_request == 12 and v.author == "bob"
    assert v.summary() == "2/2 approvals (#12): alice, carol"


def test_self_approval_never_counts() -> None:
    v = run(policy(required=1), facts(review("bob")))
    assert not v.passed and v.missing == 1
    assert v.not_counted == [("bob", "author of the pull request")]
    assert "bob (author of the pull request)" in v.summary()


def test_self_approval_counts_when_allowed() -> None:
    v = run(policy(required=1, allowSelfApproval=True), facts(review("bob")))
    assert v.passed and v.approved_by == ["bob"]


def test_logins_compare_case_insensitively() -> None:
    v = run(policy(required=1), facts(review("BOB")))
    assert v.not_counted == [("BOB", "author of the pull request")]


def test_commit_author_and_committer_never_count() -> None:
    commits = [
        CommitFacts("1" * 40, author_login="bob", committer_login="web-flow"),
        CommitFacts("2" * 40, author_login="bob", committer_login="dave"),
        CommitFacts("3" * 40, author_login="erin", committer_login="bob"),
    ]
    f = facts(review("dave"), review("erin", minute=1), review("alice", minute=2), commits=commits)
    v = run(policy(required=2), f)
    assert v.approved_by == ["alice"]
    assert v.not_counted == [
        ("dave", "committed to the pull request"),
        ("erin", "committed to the pull request"),
    ]
    assert not v.passed and v.missing == 1


def test_commit_author_known_by_noreply_email_or_coauthor_trailer() -> None:
    commits = [
        CommitFacts("1" * 40, author_email="123+Dave@users.noreply.github.com"),
        CommitFacts("2" * 40, co_author_emails=("99-erin@users.noreply.gitlab.example.com",)),
    ]
    f = facts(review("dave"), review("erin", minute=1), commits=commits)
    v = run(policy(required=1), f)
    assert [u for u, _ in v.not_counted] == ["dave", "erin"] and not v.passed


def test_commit_author_known_by_reviewer_email() -> None:
    commits = [CommitFacts("1" * 40, author_email="Dave@Example.com")]
    r = Review("dave", "APPROVED", HEAD, T0, emails=("dave@example.com",), write_access=True)
    v = run(policy(required=1), facts(r, commits=commits))
    assert v.not_counted == [("dave", "committed to the pull request")]


def test_unknown_commit_authors_block_unless_self_approval_is_allowed() -> None:
    f = facts(review("alice"), complete=False)
    assert run(policy(required=1), f).not_counted == [
        ("alice", "commit authors unknown (the API lists only part of the commits)")
    ]
    assert run(policy(required=1, allowSelfApproval=True), f).passed


def test_stale_approval_does_not_count_when_fresh_only() -> None:
    f = facts(review("alice", commit=OLD), review("carol", commit=None, minute=1))
    v = run(policy(required=1), f)
    assert not v.passed
    assert v.not_counted == [
        ("alice", "approval is stale (approved aaaaaaa, head is ddddddd)"),
        ("carol", "approval is stale (approved unknown commit, head is ddddddd)"),
    ]
    assert run(policy(required=2, freshOnly=False), f).approved_by == ["alice", "carol"]


@pytest.mark.parametrize(
    ("states", "counted", "reason"),
    [
        (["APPROVED", "CHANGES_REQUESTED"], False, "changes requested later"),
        (["CHANGES_REQUESTED", "APPROVED"], True, None),
        (["APPROVED", "DISMISSED"], False, "review dismissed"),
        (["DISMISSED", "APPROVED"], True, None),
        (["APPROVED", "COMMENTED"], True, None),
        (["APPROVED", "PENDING"], True, None),
        (["CHANGES_REQUESTED", "COMMENTED"], False, "requested changes"),
        (["COMMENTED"], False, None),
        (["APPROVED", "CHANGES_REQUESTED", "COMMENTED", "APPROVED"], True, None),
    ],
)
def test_latest_opinionated_review_wins(
    states: list[str], counted: bool, reason: str | None
) -> None:
    reviews = [
        Review(
            "alice",
            s,
            HEAD,
            None if s == "PENDING" else T0 + timedelta(minutes=i),
            write_access=True,
        )
        for i, s in enumerate(states)
    ]
    v = run(policy(required=1), facts(*reviews))
    assert v.passed is counted
    assert v.approved_by == (["alice"] if counted else [])
    assert v.not_counted == ([("alice", reason)] if reason else [])


def test_reviews_are_ordered_by_submission_time() -> None:
    # Listed out of order: the later CHANGES_REQUESTED still wins.
    f = facts(review("alice", "CHANGES_REQUESTED", minute=5), review("alice", minute=1))
    assert run(policy(required=1), f).not_counted == [("alice", "changes requested later")]


def test_outsider_is_not_an_approver() -> None:
    member = teams({("acme", "ml-leads"): {"carol": "active"}})
    p = policy(required=1, approvers=["alice", "@acme/ml-leads"])
    v = run(p, facts(review("mallory"), review("Alice", minute=1)), is_member=member)
    assert v.approved_by == ["Alice"] and v.passed
    assert v.not_counted == [("mallory", "not an approver")]
    # listed users are matched without asking the forge
    assert member.asked == [("acme", "ml-leads", "mallory")]  # type: ignore[attr-defined]


def test_team_member_active_counts_pending_does_not() -> None:
    member = teams({("acme", "ml-leads"): {"carol": "active", "dave": "pending"}})
    p = policy(required=2, approvers=["@acme/ml-leads"])
    v = run(p, facts(review("carol"), review("dave", minute=1)), is_member=member)
    assert v.approved_by == ["carol"] and v.missing == 1
    assert v.not_counted == [("dave", "team membership pending")]


def test_boolean_is_member_works_too() -> None:
    p = policy(required=1, approvers=["@acme/leads"])
    v = run(p, facts(review("carol")), is_member=lambda o, t, u: u == "carol")
    assert v.passed


def test_membership_is_only_asked_for_otherwise_valid_approvals() -> None:
    member = teams({})
    p = policy(required=1, approvers=["@acme/ml-leads"])
    run(p, facts(review("bob"), review("x", commit=OLD, minute=1)), is_member=member)
    assert member.asked == []  # type: ignore[attr-defined]


def test_direct_push_is_refused_when_approvals_are_required() -> None:
    v = run(policy(required=1), None)
    assert not v.passed and v.missing == 1 and v.pull_request is None
    assert v.summary().startswith("blocked: no pull request for this commit (direct push)")
    assert any("direct push" in line for line in v.explain())
    assert run(policy(required=0), None).passed
    assert run(policy(), None).summary() == "no approvals required"


def test_by_risk_raises_the_count_but_never_lowers_it() -> None:
    p = policy(required=2, byRisk={"high": 3, "low": 1})
    f = facts(review("alice"), review("carol", minute=1))
    assert run(p, f, risk="low").required == 2
    assert run(p, f, risk="medium").passed
    high = run(p, f, risk="high")
    assert high.required == 3 and high.missing == 1 and not high.passed
    assert "Required: 3 approvals (risk high)." in high.explain()


def test_rollback_uses_its_own_policy() -> None:
    p = policy(
        required=2,
        approvers=["alice", "carol"],
        byRisk={"critical": 3},
        rollback={"required": 1},
    )
    f = facts(review("carol"), review("erin", minute=1))
    v = run(p, f, risk="critical", rollback=True)
    assert v.passed and v.required == 1 and v.rollback
    assert v.not_counted == [("erin", "not an approver")]  # approvers inherited
    assert "Required: 1 approval (rollback policy)." in v.explain()
    assert not run(p, f, risk="critical").passed

    anyone = policy(required=2, approvers=["alice"], rollback={"required": 1, "approvers": []})
    assert run(anyone, facts(review("erin")), rollback=True).approved_by == ["erin"]
    # a rollback still may not be self-approved, and needs a pull request
    assert not run(anyone, facts(review("bob")), rollback=True).passed
    assert not run(anyone, None, rollback=True).passed
    # no rollback policy: a rollback is an ordinary change
    assert run(policy(required=2), facts(review("alice")), rollback=True).required == 2


def test_summary_fits_a_commit_status() -> None:
    many = [review(f"reviewer-with-a-long-name-{i}", commit=OLD, minute=i) for i in range(10)]
    v = run(policy(required=3), facts(*many))
    assert len(v.summary()) <= 140 and v.summary().endswith("…")
    assert v.summary().startswith("0/3 approvals (#12), 3 missing; not counted:")


def test_explain_names_everyone() -> None:
    member = teams({})
    p = policy(required=2, approvers=["alice", "@acme/ml-leads"])
    v = run(
        p,
        facts(review("alice"), review("bob", minute=1), review("zed", minute=2)),
        is_member=member,
    )
    assert v.explain() == [
        "Pull request #12 by bob, head ddddddd.",
        "Required: 2 approvals (risk low).",
        "Approvers: alice, @acme/ml-leads.",
        "Approved by: alice.",
        "Not counted: bob: author of the pull request.",
        "Not counted: zed: not an approver.",
        "Blocked: 1 more approval needed.",
    ]
    d = v.as_dict()
    assert d["approvedBy"] == ["alice"] and d["missing"] == 1 and d["pullRequest"] == 12
    assert d["notCounted"][0] == {"user": "bob", "reason": "author of the pull request"}


def test_policy_is_strict_and_camel_case() -> None:
    p = ApprovalPolicy.model_validate(
        {
            "required": 2,
            "approvers": ["alice", "@acme/ml-leads", "@group/sub/team", "renovate[bot]"],
            "allowSelfApproval": False,
            "freshOnly": True,
            "byRisk": {"high": 2, "critical": 3},
            "rollback": {"required": 1},
        }
    )
    assert p.by_risk == {"high": 2, "critical": 3} and p.rollback is not None
    assert p.rollback.approvers is None
    assert ApprovalPolicy(required=1, fresh_only=False).fresh_only is False
    bads: list[dict[str, object]] = [
        {"required": "2"},
        {"required": -1},
        {"required": True},
        {"byRisk": {"severe": 2}},
        {"byRisk": {"high": -1}},
        {"approvers": ["acme/ml-leads"]},
        {"approvers": ["@acme/"]},
        {"approvers": ["al ice"]},
        {"allowSelfApproval": "yes"},
        {"requird": 1},
        {"rollback": {}},
        {"rollback": {"required": 1, "extra": 1}},
    ]
    for bad in bads:
        with pytest.raises(ValidationError):
            ApprovalPolicy.model_validate(bad)
    with pytest.raises(ValidationError):
        p.required = 3  # type: ignore[misc]


def test_policy_json_schema_uses_camel_case() -> None:
    props = ApprovalPolicy.model_json_schema(by_alias=True)["properties"]
    assert {"required", "approvers", "allowSelfApproval", "freshOnly", "byRisk", "rollback"} == set(
        props
    )


def test_noreply_and_coauthor_parsing() -> None:
    assert noreply_login("12345+octo-cat@users.noreply.github.com") == "octo-cat"
    assert noreply_login("octocat@users.noreply.github.com") == "octocat"
    assert noreply_login("octocat@example.com") is None
    msg = (
        "Fix\n\nCo-authored-by: Ann <ann@example.com>\n"
        "co-authored-by: Bo <1+bo@users.noreply.github.com>\n"
    )
    assert co_author_emails(msg) == ("ann@example.com", "1+bo@users.noreply.github.com")


def test_a_commit_nobody_can_be_tied_to_blocks_four_eyes() -> None:
    """Issue 12: an author with an unlinked email (or a co-author) could approve their
    own change; now nobody counts until every author is known."""
    unlinked = CommitFacts("1" * 40, author_email="mallory@personal.example")
    v = run(policy(required=1), facts(review("mallory"), commits=[unlinked]))
    assert not v.passed
    assert v.not_counted == [
        ("mallory", "commit authors unknown (1111111 by someone no account is tied to)")
    ]
    co = CommitFacts("2" * 40, author_login="bob", co_author_emails=("m@personal.example",))
    assert not run(policy(required=1), facts(review("alice"), commits=[co])).passed
    known = CommitFacts("3" * 40, author_login="bob", committer_login="web-flow")
    assert run(policy(required=1), facts(review("alice"), commits=[known])).passed
    # GitLab refusing authors' and committers' approvals itself makes them no risk
    enforced = PullRequestFacts(**{**facts(review("alice"), commits=[unlinked]).__dict__,
                                   "forge_enforces_four_eyes": True})  # fmt: skip
    assert run(policy(required=1), enforced).passed
    assert run(
        policy(required=1, allowSelfApproval=True), facts(review("alice"), commits=[unlinked])
    ).passed


def test_bots_count_only_when_listed_by_name() -> None:
    bot = Review("github-actions[bot]", "APPROVED", HEAD, T0, write_access=True)
    flagged = Review(
        "renovate", "APPROVED", HEAD, T0 + timedelta(minutes=1), bot=True, write_access=True
    )
    v = run(policy(required=1), facts(bot, flagged))
    assert (
        not v.passed
        and [r for _, r in v.not_counted] == ["a bot (bots count only when listed by name)"] * 2
    )
    listed = run(policy(required=1, approvers=["github-actions[bot]"]), facts(bot))
    assert listed.passed


def test_with_anyone_allowed_only_writers_count() -> None:
    writer = Review("alice", "APPROVED", HEAD, T0, write_access=True)
    reader = Review("drive-by", "APPROVED", HEAD, T0 + timedelta(minutes=1), write_access=False)
    unknown = Review("who", "APPROVED", HEAD, T0 + timedelta(minutes=2))
    v = run(policy(required=1), facts(writer, reader, unknown))
    assert v.approved_by == ["alice"]
    assert v.not_counted == [
        ("drive-by", "no write access to the repository"),
        ("who", "write access unknown"),
    ]


def test_naive_and_aware_review_times_compare() -> None:
    naive = Review("alice", "APPROVED", HEAD, datetime(2026, 3, 2, 10, 0), write_access=True)
    aware = Review("alice", "CHANGES_REQUESTED", HEAD, T0 + timedelta(hours=2), write_access=True)
    assert not run(policy(required=1), facts(aware, naive)).passed
