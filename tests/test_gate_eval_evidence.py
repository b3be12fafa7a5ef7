"""Eval runs as promotion evidence (gate/judge.py), as rows of facts judged in-process:
a required Eval's latest run on the change's exact digest, in `from`, with the eval of
record (dataset, repeat, thresholds: part of the policy), passed by the thresholds of
record. test_cli_eval_promotion.py proves the wiring."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.checks.evidence import eval_digest
from reconciler.config import ApprovalsConfig
from reconciler.gate.judge import EvalRun, Evidence, Facts, judge
from reconciler.manifests.models import EnvironmentSpec
from reconciler.policy import Policy

NONE = ApprovalsConfig.model_validate({"source": "none"})
T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
D1 = "sha256:" + "1" * 64
QUALITY = {
    "deployment": "chat",
    "dataset": "sha256:" + "a" * 64,
    "repeat": 3,
    "minPassRate": 0.9,
    "minSamples": 30,
}
E_QUALITY = eval_digest(QUALITY)
LOWERED = {**QUALITY, "minPassRate": 0.5}
E_LOWERED = eval_digest(LOWERED)


def required(origin: str = "run r1", doc: dict[str, Any] = QUALITY) -> Policy:
    spec = EnvironmentSpec.model_validate(
        {"promotion": {"from": "staging", "requires": {"checks": False, "evals": ["quality"]}}}
    )
    return Policy(spec, NONE, origin, {}, (), {"quality": doc})


def run(
    n: int, *, passed: int, calls: int = 60, planned: int = 60, digest: str = E_QUALITY
) -> EvalRun:
    return EvalRun("quality", f"ex-2026120{n}", digest, calls, passed, planned)


def facts(recorded: Policy, *runs: EvalRun, new: Policy | None = None) -> Facts:
    ev = Evidence("chat", "staging", D1, D1, T0 - timedelta(hours=3), eval_runs=runs)
    return Facts(
        "production", "apply", "c" * 40, new or recorded, recorded,
        base="b" * 40, evidence=(ev,), evidence_at=T0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("runs", "reason"),
    [
        ([run(1, passed=58)], None),
        ([], "has no run of eval 'quality' (as of record"),
        ([run(1, passed=58, digest=E_LOWERED)], "has no run of eval 'quality'"),
        ([run(1, passed=50)], "failed its latest run of eval 'quality': pass rate 0.833 < 0.9"),
        ([run(1, passed=58), run(2, passed=40)], "failed its latest run of eval 'quality'"),
        ([run(1, passed=40), run(2, passed=58)], None),
        ([run(1, passed=20, calls=20)], "stopped its latest run of eval 'quality' after 20 of"),
        ([run(1, passed=20, calls=20, planned=20)], "is inconclusive on eval 'quality': 20"),
    ],
)
def test_the_latest_run_with_the_eval_of_record_decides(
    runs: list[EvalRun], reason: str | None
) -> None:
    result = judge(facts(required(), *runs))
    if reason is None:
        assert result.passed, result.reasons
    else:
        assert not result.passed
        assert any(reason in r for r in result.reasons), result.reasons


def test_a_change_lowering_the_bar_is_judged_by_the_bar_of_record() -> None:
    """A run of the lowered eval passes the change's own bar, not the bar of record; the
    run of the eval of record fails it. Either way the change is blocked."""
    lowered = required("the change itself", LOWERED)
    only_lowered = judge(facts(required(), run(1, passed=40, digest=E_LOWERED), new=lowered))
    assert only_lowered.policy_changed and not only_lowered.passed
    assert any("has no run of eval 'quality' (as of record" in r for r in only_lowered.reasons)
    of_record = judge(facts(required(), run(1, passed=40), new=lowered))
    assert any("pass rate 0.667 < 0.9" in r for r in of_record.reasons), of_record.reasons


def test_a_required_eval_missing_from_the_record_fails_closed() -> None:
    spec = EnvironmentSpec.model_validate(
        {"promotion": {"from": "staging", "requires": {"checks": False, "evals": ["quality"]}}}
    )
    result = judge(facts(Policy(spec, NONE, "run r1", {}, ()), run(1, passed=60)))
    assert not result.passed
    assert any("needs eval 'quality', which is not declared" in r for r in result.reasons)


BASED = {**QUALITY, "baseline": {"environment": "production", "maxDrop": 0.05}}
E_BASED = eval_digest(BASED)
D0 = "sha256:" + "0" * 64


def based(n: int, passed: int, baseline: dict[str, Any] | None) -> EvalRun:
    return EvalRun("quality", f"ex-2026120{n}", E_BASED, 60, passed, 60, baseline)


@pytest.mark.parametrize(
    ("baseline", "passed", "reason"),
    [
        ({"digest": D0, "rate": 0.95}, 57, None),  # 0.95, level with what production runs
        ({"digest": D0, "rate": 0.98}, 56, None),  # 0.933: within maxDrop 0.05
        (
            {"digest": D0, "rate": 1.0},
            56,
            "fell behind production on eval 'quality': pass "
            "rate 0.933 < 1.000 (000000000000) - maxDrop 0.05",
        ),
        (
            {"digest": D0, "rate": None},
            60,
            "is inconclusive on eval 'quality': no run of it on "
            "what production runs (000000000000)",
        ),
        ({"digest": None, "rate": None}, 56, None),  # nothing applied there: nothing to trail
        ({"digest": D1, "rate": None, "same": True}, 56, None),  # it runs this very digest
        (None, 60, "ran eval 'quality' without its baseline (production)"),
        (
            {"digest": D0, "rate": 0.5},
            50,
            "failed its latest run of eval 'quality': pass rate 0.833 < 0.9",
        ),  # the absolute bar still holds
    ],
)
def test_a_baseline_bar_is_relative_to_what_the_baseline_environment_runs(
    baseline: dict[str, Any] | None, passed: int, reason: str | None
) -> None:
    result = judge(facts(required(doc=BASED), based(1, passed, baseline)))
    if reason is None:
        assert result.passed, result.reasons
    else:
        assert not result.passed
        assert any(reason in r for r in result.reasons), result.reasons


def test_an_eval_is_evidence_for_its_own_deployment_only() -> None:
    """An eval of `chat` says nothing of `summarize`: a change to summarize is not held
    to it (and not blocked for ever by an eval that can never run on it)."""
    ev = Evidence("summarize", "staging", D1, D1, T0 - timedelta(hours=3))
    facts_ = Facts(
        "production", "apply", "c" * 40, required(), required(),
        base="b" * 40, evidence=(ev,), evidence_at=T0,
    )  # fmt: skip
    assert judge(facts_).passed


def test_a_refusal_for_an_eval_says_to_run_it_where_promotion_comes_from() -> None:
    result = judge(facts(required()))
    assert not result.passed
    assert any("`reconciler eval NAME --env staging`" in f for f in result.fixes), result.fixes
