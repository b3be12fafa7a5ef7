"""A check request's expectations judged over recorded executions: each outcome with the
measured value beside the bound."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.checks.evidence import evidence_digest_of
from reconciler.checks.expect import judge
from reconciler.manifests.models import CheckExpect
from reconciler.runs.model import Execution

AT = datetime(2026, 12, 7, tzinfo=UTC)


def ex(
    status: str = "completed", result: str | None = "Answer: refund in 5 days", **kw: Any
) -> Execution:
    e = Execution("ex-1", "dev", "chat", "check", status, AT)  # type: ignore[arg-type]
    e.result, e.latency_ms, e.cost = result, kw.get("latency", 120.0), kw.get("cost", 0.002)
    return e


@pytest.mark.parametrize(
    ("expect", "execution", "failing"),
    [
        ({}, ex(), []),
        ({"contains": ["refund"], "notContains": ["as an AI"]}, ex(), []),
        ({"contains": ["policy"]}, ex(), ["contains"]),
        ({"notContains": ["refund"]}, ex(), ["notContains"]),
        ({"regex": r"\d+ days$"}, ex(), []),
        ({"regex": r"^refund"}, ex(), ["regex"]),
        ({"equals": "Answer: refund in 5 days"}, ex(), []),
        ({"equals": "Answer"}, ex(), ["equals"]),
        ({"latencyMsMax": 100}, ex(), ["latencyMsMax"]),
        ({"costMax": 0.01}, ex(), []),
        ({"costMax": 0.01}, ex(cost=None), ["costMax"]),  # unknown cost never passes
        ({"contains": ["refund"]}, ex("failed", None), ["succeeded", "contains"]),
        ({"succeeded": False}, ex("failed", None), []),
        ({"succeeded": False}, ex(), ["succeeded"]),
    ],
)
def test_expectations(expect: dict[str, Any], execution: Execution, failing: list[str]) -> None:
    outcomes = judge(CheckExpect.model_validate(expect), execution)
    assert [o.name for o in outcomes if not o.ok] == failing


def test_a_failed_expectation_says_what_was_measured() -> None:
    (lat,) = [o for o in judge(CheckExpect(latency_ms_max=100), ex()) if o.name == "latencyMsMax"]
    assert lat.line() == "latencyMsMax: expected 100.0, measured 120.0"


def test_the_evidence_digest_covers_what_answers_not_where() -> None:
    spec = {"model": "m", "prompt": {"name": "p", "version": "1.0.0", "template": "t"},
            "scaling": {"minReplicas": 1}, "env": {"A": "1"}}  # fmt: skip
    base = evidence_digest_of(spec, "local")
    assert evidence_digest_of({**spec, "scaling": {"minReplicas": 3}, "env": {}}, "local") == base
    assert evidence_digest_of(spec, "http") != base
    assert evidence_digest_of({**spec, "model": "n"}, "local") != base
    assert evidence_digest_of({**spec, "options": {"temperature": 0.1}}, "local") != base
    changed = {**spec, "prompt": {"name": "p", "version": "1.0.0", "template": "u"}}
    assert evidence_digest_of(changed, "local") != base
