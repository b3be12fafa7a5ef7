"""The gate's judgement as a pure function of facts (gate/judge.py): every attack family
of issue 12 and issue 23 as a row of facts, judged in-process. The CLI tests in
test_gate_attacks*.py prove the wiring (that the facts builder reads what these rows
assume); these prove the rule, fast."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.approvals.facts import CommitFacts as PrCommit
from reconciler.approvals.facts import PullRequestFacts, Review
from reconciler.config import ApprovalsConfig
from reconciler.gate.judge import (
    Candidate,
    Claim,
    CommitFacts,
    Facts,
    PolicyStep,
    judge,
    policies_in_force,
)
from reconciler.manifests.models import EnvironmentSpec
from reconciler.policy import Policy

GITHUB = ApprovalsConfig.model_validate({"source": "github", "repository": "acme/manifests"})
KEY = ("github", "acme/manifests")
T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)  # a Wednesday


def policy(origin: str = "run r1", *, source: ApprovalsConfig = GITHUB, **spec: Any) -> Policy:
    body = {
        "protected": True,
        "approvals": {"required": 2, "approvers": ["alice", "bob", "carol"]},
        **spec,
    }
    return Policy(EnvironmentSpec.model_validate(body), source, origin, {}, ("TOKEN",))


STRICT = policy()
OPEN = Policy(
    EnvironmentSpec.model_validate({"approvals": {"required": 0}}), GITHUB, "commit open", {}, ()
)


def pr(
    number: int,
    *,
    head: str,
    merged: str | None = None,
    commits: Sequence[str] = (),
    approve: Sequence[str] = ("alice", "bob"),
    base: str = "main",
    author: str = "dave",
) -> PullRequestFacts:
    return PullRequestFacts(
        number=number,
        url=f"https://example.com/pull/{number}",
        title="a change",
        state="closed" if merged else "open",
        merged=merged is not None,
        author=author,
        head_sha=head,
        base_ref=base,
        commits=tuple(PrCommit(sha, author_login=author) for sha in (commits or [head])),
        reviews=tuple(Review(u, "APPROVED", commit_id=head, submitted_at=T0) for u in approve),
        merge_commit_sha=merged,
    )


def cand(facts: PullRequestFacts, **kw: Any) -> Candidate:
    return Candidate(facts.number, facts, **{"listed": True, "result_applied": True, **kw})


def commit(sha: str, *cands: Candidate) -> CommitFacts:
    return CommitFacts(sha, {KEY: tuple(cands)})


def facts(*relevant: CommitFacts, **kw: Any) -> Facts:
    base = Facts(
        environment="production",
        mode="apply",
        commit=relevant[-1].sha if relevant else "t" * 40,
        new=STRICT,
        recorded=STRICT,
        base="b" * 40,
        relevant=relevant,
        plan_risk="medium",
        deploy_branch={KEY: "main"},
        sources=frozenset({KEY}),
    )
    return replace(base, **kw)


MERGED = pr(7, head="h" * 40, merged="m" * 40)


def test_an_approved_merged_pull_request_covers_its_merge_result() -> None:
    assert judge(facts(commit("m" * 40, cand(MERGED)))).passed


# -- coverage is exact (issue 23, attack 2) ---------------------------------------------

COVERAGE: dict[str, tuple[CommitFacts, bool]] = {
    "merge result": (commit("m" * 40, cand(MERGED)), True),
    "its own commit": (commit("h" * 40, cand(MERGED)), True),
    "the direct push below its merge, named by --pr": (
        commit("x" * 40, cand(MERGED, listed=False, on_rebase_chain=True)),
        False,
    ),
    "below a squash, on its first-parent chain, not listed by the forge": (
        commit("x" * 40, cand(MERGED, listed=False, on_rebase_chain=True)),
        False,
    ),
    "a rebase merge's copy, listed by the forge": (
        commit("r" * 40, cand(MERGED, listed=True, on_rebase_chain=True)),
        True,
    ),
    "its merge result is not what is applied": (
        commit("m" * 40, cand(MERGED, result_applied=False)),
        False,
    ),
    "into another branch": (
        commit("m" * 40, cand(pr(7, head="h" * 40, merged="m" * 40, base="experiments"))),
        False,
    ),
    "not merged": (commit("h" * 40, cand(pr(7, head="h" * 40))), False),
    "a direct push": (commit("x" * 40), False),
}


@pytest.mark.parametrize("case", sorted(COVERAGE))
def test_coverage_is_exact(case: str) -> None:
    row, covered = COVERAGE[case]
    result = judge(facts(row))
    assert result.passed is covered, result.reasons
    if not covered:
        assert result.fixes, "a refusal says what to do"


# -- no trust from an unreviewed past (issue 23, attack 1) ------------------------------

LOWERED = Policy(
    EnvironmentSpec.model_validate({"approvals": {"required": 0}}),
    GITHUB,
    "commit lowered",
    {},
    ("TOKEN",),
)


def step(sha: str, after: Policy | None, *cands: Candidate) -> PolicyStep:
    return PolicyStep(commit(sha, *cands), after)


def test_two_direct_pushes_leave_the_first_declaration_in_force() -> None:
    history = (step("c" * 40, STRICT), step("p" * 40, LOWERED))  # the push lowering it
    f = facts(commit("x" * 40), recorded=None, base=None, new=LOWERED, history=history)
    assert [p.origin for p in policies_in_force(f)] == ["run r1", "commit lowered"]
    result = judge(f)
    assert not result.passed and result.required == 2


def test_a_reviewed_relaxation_in_history_lifts_the_old_policy() -> None:
    review = cand(pr(3, head="p" * 40, merged="p" * 40, approve=("alice", "bob", "carol")))
    history = (step("c" * 40, STRICT), step("p" * 40, LOWERED, review))
    f = facts(commit("x" * 40), recorded=None, base=None, new=LOWERED, history=history)
    assert [p.origin for p in policies_in_force(f)] == ["commit lowered"]
    assert judge(f).passed


def test_a_relaxation_approved_below_the_critical_count_lifts_nothing() -> None:
    strict = replace(
        STRICT,
        spec=EnvironmentSpec.model_validate(
            {
                "approvals": {
                    "required": 2,
                    "approvers": ["alice", "bob", "carol"],
                    "byRisk": {"critical": 3},
                }
            }
        ),
    )
    two = cand(pr(3, head="p" * 40, merged="p" * 40))
    history = (step("c" * 40, strict), step("p" * 40, LOWERED, two))
    f = facts(commit("x" * 40), recorded=None, base=None, new=LOWERED, history=history)
    assert len(policies_in_force(f)) == 2


def test_removing_and_redeclaring_an_environment_unreviewed_keeps_its_policy() -> None:
    history = (step("c" * 40, STRICT), step("d" * 40, None), step("e" * 40, LOWERED))
    f = facts(commit("x" * 40), recorded=None, base=None, new=LOWERED, history=history)
    assert policies_in_force(f)[0] is STRICT


def test_a_new_environment_is_judged_by_what_it_declares() -> None:
    f = facts(commit("x" * 40), recorded=None, base=None, new=OPEN, history=())
    result = judge(f)
    assert result.passed and result.policy is not None
    assert "new" in result.policy.origin


def test_the_recorded_policy_wins_over_history() -> None:
    f = facts(commit("x" * 40), recorded=STRICT, new=LOWERED, history=(step("c" * 40, OPEN),))
    result = judge(f)
    assert not result.passed and result.policy_changed and result.risk == "critical"


# -- provider settings and variables are policy (issue 23, attacks 3 and 4) -------------


def test_a_provider_moved_elsewhere_is_a_policy_change() -> None:
    moved = replace(STRICT, providers={"registry": {"config": {"baseUrl": "https://elsewhere"}}})
    result = judge(facts(commit("m" * 40, cand(MERGED)), new=moved))
    assert result.policy_changed and result.risk == "critical"
    assert result.policies[-1] is moved


def test_another_environments_variable_brings_its_policy() -> None:
    claim = Claim("TOKEN", "production", replace(STRICT, origin="environment production's"))
    dev = facts(commit("x" * 40), environment="dev", new=OPEN, recorded=OPEN, claims=(claim,))
    result = judge(dev)
    assert not result.passed and result.required == 2
    assert any("production" in r for r in result.reasons)


def test_an_open_environment_without_claims_needs_nothing() -> None:
    assert judge(facts(commit("x" * 40), environment="dev", new=OPEN, recorded=OPEN)).passed


# -- the rest of the families, one row each ---------------------------------------------


def test_a_pull_request_cannot_lower_the_policy_it_is_judged_by() -> None:
    """Two approvals would do for the change; lowering the policy makes it critical,
    judged by the policy of record's three."""
    three = policy(
        approvals={"required": 2, "approvers": ["alice", "bob", "carol"], "byRisk": {"critical": 3}}
    )
    result = judge(facts(commit("m" * 40, cand(MERGED)), recorded=three, new=LOWERED))
    assert not result.passed and "alters the policy" in " ".join(result.reasons)


def test_an_author_cannot_approve_their_own_change() -> None:
    own = cand(pr(7, head="h" * 40, merged="m" * 40, author="alice", approve=("alice", "bob")))
    assert not judge(facts(commit("m" * 40, own))).passed


def test_a_closed_window_of_the_policy_of_record_blocks_and_says_when() -> None:
    windowed = policy(windows=[{"deny": "0 9 * * *", "duration": "2h", "timezone": "UTC"}])
    at = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    result = judge(facts(commit("m" * 40, cand(MERGED)), recorded=windowed, new=STRICT, now=at))
    assert not result.passed
    assert any("deploy window" in r for r in result.reasons)


def test_a_forge_error_blocks_with_the_reason() -> None:
    result = judge(facts(commit("m" * 40), problem="GitHub API: 502 Bad Gateway"))
    assert not result.passed and "502" in result.reasons[0] and result.fixes


def test_no_approval_source_in_the_policy_of_record_blocks() -> None:
    result = judge(facts(commit("m" * 40, cand(MERGED)), sources=frozenset()))
    assert not result.passed and "names no approval source" in result.reasons[0]


def test_an_older_commit_than_the_recorded_one_is_refused() -> None:
    result = judge(facts(commit("m" * 40, cand(MERGED)), base_descends=False))
    assert not result.passed and "revert" in result.fixes[0]


def test_the_working_tree_never_reaches_a_protected_environment() -> None:
    result = judge(facts(mode="working_tree", commit=None))
    assert not result.passed


def test_the_operators_approval_source_is_the_way_out_of_a_policy_that_names_none() -> None:
    sourceless = replace(STRICT, approvals=ApprovalsConfig())
    row = commit("m" * 40, cand(MERGED))
    stuck = judge(facts(row, recorded=sourceless, new=sourceless))
    assert not stuck.passed and "RECONCILER_APPROVALS_SOURCE" in stuck.fixes[0]
    out = judge(facts(row, recorded=sourceless, new=sourceless, operator_source=KEY))
    assert out.passed, out.reasons


def test_a_cloud_identity_the_runner_signs_in_with_is_a_variable_read(example_repo: Any) -> None:
    """The example's azure provider names no token: azure-identity signs in from the
    runner's surroundings, and production's policy says it reads that identity, so an
    environment pointing an azure-openai provider elsewhere is claimed like any token."""
    from reconciler.config import load_settings
    from reconciler.load import load
    from reconciler.policy import variables_read

    loaded = load(load_settings(example_repo, env={}))
    assert "AZURE_IDENTITY (ambient)" in variables_read(loaded.desired, "production")
    assert "AZURE_IDENTITY (ambient)" not in variables_read(loaded.desired, "dev")
