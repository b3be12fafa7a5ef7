"""The JSON Schema and numeric expectations of checks and eval cases: judged on the
answer recorded, each with what was measured; a schema that is itself invalid is
refused where it is written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.checks.expect import judge
from reconciler.manifests.models import CheckExpect
from reconciler.runs.model import Execution

AT = datetime(2026, 12, 7, tzinfo=UTC)
SCHEMA = {
    "type": "object",
    "required": ["intent", "confidence"],
    "properties": {
        "intent": {"enum": ["refund", "delivery", "other"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
}


def answered(result: str | None, status: str = "completed") -> Execution:
    e = Execution("ex-1", "dev", "classify", "eval", status, AT)  # type: ignore[arg-type]
    e.result = result
    return e


def outcome(expect: dict[str, Any], answer: str | None, status: str = "completed") -> Any:
    (o,) = [
        o
        for o in judge(CheckExpect.model_validate(expect), answered(answer, status))
        if o.name != "succeeded"
    ]
    return o


@pytest.mark.parametrize(
    ("answer", "ok", "measured"),
    [
        ('{"intent": "refund", "confidence": 0.9}', True, "valid"),
        ('{"intent": "refund"}', False, "(root): 'confidence' is a required property"),
        (
            '{"intent": "refund", "confidence": 3}',
            False,
            "confidence: 3 is greater than the maximum of 1",
        ),
        ('{"intent": "cancel", "confidence": 0.5}', False, "intent: 'cancel' is not one of"),
        ("Sure! Here is the JSON", False, "not JSON: Expecting value: line 1 column 1"),
    ],
)
def test_json_schema_says_where_an_answer_fails(answer: str, ok: bool, measured: str) -> None:
    o = outcome({"jsonSchema": SCHEMA}, answer)
    assert (o.name, o.expected, o.ok) == ("jsonSchema", "valid", ok)
    assert o.measured.startswith(measured), o.measured


def test_a_failed_call_has_no_answer_to_validate() -> None:
    o = outcome({"succeeded": True, "jsonSchema": SCHEMA}, None, status="failed")
    assert (o.ok, o.measured) == (False, "no answer")


def test_an_invalid_schema_is_refused_where_it_is_written() -> None:
    with pytest.raises(ValidationError, match="not a valid JSON Schema: 'objekt' is not valid"):
        CheckExpect.model_validate({"jsonSchema": {"type": "objekt"}})


@pytest.mark.parametrize(
    ("number", "answer", "ok", "measured"),
    [
        ({"equals": 42}, "42", True, 42.0),
        ({"equals": 42}, " 42.0\n", True, 42.0),
        ({"equals": 3.14, "tolerance": 0.01}, "3.141", True, 3.141),
        ({"equals": 3.14}, "3.141", False, 3.141),
        ({"min": 1, "max": 5}, "4", True, 4.0),
        ({"min": 1, "max": 5}, "6", False, 6.0),
        ({"min": 1}, "about 4", False, "about 4"),
        ({"max": 5}, "nan", False, "nan"),
    ],
)
def test_a_number_is_the_whole_answer_within_its_bounds(
    number: dict[str, Any], answer: str, ok: bool, measured: Any
) -> None:
    o = outcome({"number": number}, answer)
    assert (o.name, o.ok) == ("number", ok)
    assert o.measured == measured or (isinstance(o.measured, float) and str(o.measured) == "nan")
    assert o.expected == {k: float(v) for k, v in number.items()}


def test_a_number_expectation_needs_a_bound() -> None:
    with pytest.raises(ValidationError, match="needs `equals`, `min` or `max`"):
        CheckExpect.model_validate({"number": {"tolerance": 0.1}})


def test_a_cut_answer_is_judged_whole() -> None:
    """What state keeps of an answer is cut to `executions.maxResultBytes`; what was
    looked for past the cut is still found."""
    ex = answered("x" * 10)
    ex.answer = "x" * 300 + " DROP TABLE users"
    (o,) = [
        o
        for o in judge(CheckExpect.model_validate({"notContains": ["DROP TABLE"]}), ex)
        if o.name == "notContains"
    ]
    assert not o.ok
