"""The promotion rule of the gate (gate/judge.py), as rows of facts judged in-process:
the policy of record's `promotion` decides, over the evidence the source holds for each
deployment the change alters. test_cli_promotion.py proves the wiring."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.config import ApprovalsConfig
from reconciler.gate.judge import Evidence, Facts, judge
from reconciler.manifests.models import EnvironmentSpec
from reconciler.policy import Policy

NONE = ApprovalsConfig.model_validate({"source": "none"})
T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def policy(origin: str = "run r1", **spec: Any) -> Policy:
    return Policy(EnvironmentSpec.model_validate(spec), NONE, origin, {}, ())


PROMOTED = policy(promotion={"from": "staging", "soak": "2h"})
NO_SOAK = policy(promotion={"from": "staging"})
NO_CHECKS = policy(promotion={"from": "staging", "requires": {"checks": False}})


def ev(
    *,
    digest: str = D1,
    applied: str | None = D1,
    ago: timedelta = timedelta(hours=3),
    passed: int = 2,
    failed: int = 0,
    source: str = "staging",
) -> Evidence:
    at = None if applied is None else T0 - ago
    return Evidence("chat", source, digest, applied, at, passed, failed)


def facts(recorded: Policy | None, *evidence: Evidence, new: Policy | None = None) -> Facts:
    return Facts(
        "production",
        "apply",
        "c" * 40,
        new or recorded or PROMOTED,
        recorded,
        base="b" * 40,
        evidence=evidence,
        evidence_at=T0,
    )


@pytest.mark.parametrize(
    ("recorded", "evidence", "reason"),
    [
        (PROMOTED, [ev()], None),
        (PROMOTED, [ev(applied=None)], "deployment.chat is not applied in staging"),
        (PROMOTED, [ev(applied=D2)], "but staging runs 222222222222"),
        (PROMOTED, [ev(passed=0)], "has no passing check in staging"),
        (PROMOTED, [ev(failed=1)], "failed 1 check request(s) in staging"),
        (PROMOTED, [ev(ago=timedelta(minutes=30))], "is soaking in staging: applied 30m00s ago"),
        (NO_SOAK, [ev(ago=timedelta(seconds=5))], None),
        (NO_CHECKS, [ev(passed=0)], None),
        (NO_CHECKS, [ev(applied=D2, passed=0)], "but staging runs"),
        (policy(), [ev(applied=None)], None),  # no promotion block: nothing asked
        (PROMOTED, [ev(source="dev")], "is not applied in staging"),
    ],
)
def test_promotion_rule(recorded: Policy, evidence: list[Evidence], reason: str | None) -> None:
    result = judge(facts(recorded, *evidence))
    if reason is None:
        assert result.passed, result.reasons
    else:
        assert not result.passed
        assert any(reason in r for r in result.reasons), result.reasons
        assert any("reconciler promote --from staging --to production" in f for f in result.fixes)


def test_soak_says_when_it_is_eligible() -> None:
    result = judge(facts(PROMOTED, ev(ago=timedelta(minutes=90))))
    assert "needs 2h00m (eligible at 2026-12-02T10:30:00+00:00)" in result.reasons[0]


def test_a_change_cannot_drop_its_own_promotion_requirement() -> None:
    """The block is policy: a change removing it is still judged by the policy of record
    (and the new one), so its own edit does not let it through."""
    result = judge(facts(PROMOTED, ev(passed=0), new=policy("the change itself")))
    assert result.policy_changed and not result.passed
    assert any("has no passing check in staging" in r for r in result.reasons)


def test_a_change_adding_promotion_is_judged_by_it_too() -> None:
    new = policy("the change itself", promotion={"from": "staging"})
    result = judge(facts(policy(), ev(applied=None), new=new))
    assert not result.passed and result.policy_changed
    assert result.reasons == [
        "promotion from staging (policy of the change itself): deployment.chat is not "
        "applied in staging"
    ]
