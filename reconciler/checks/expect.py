"""A check request's expectations, judged over one recorded execution: pure, so every
outcome is tested on data. Each result carries the measured value beside the bound."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from reconciler.manifests.models import CheckExpect, NumberExpect
from reconciler.runs.model import Execution


@dataclass(frozen=True)
class Outcome:
    """One expectation: what was asked, what was measured, whether it held."""

    name: str
    expected: Any
    measured: Any
    ok: bool

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "expected": self.expected,
            "measured": self.measured,
            "ok": self.ok,
        }

    def line(self) -> str:
        return f"{self.name}: expected {self.expected!r}, measured {self.measured!r}"


def judge(expect: CheckExpect, ex: Execution) -> list[Outcome]:
    """Every expectation set, in a fixed order. A failed call fails every expectation on
    its answer (there is none to look at)."""
    succeeded = ex.status == "completed"
    out = [Outcome("succeeded", expect.succeeded, succeeded, succeeded == expect.succeeded)]
    # the whole answer, not what was kept of it (a cut could hide what is looked for)
    answer = (ex.answer if ex.answer is not None else ex.result) if succeeded else None
    for text in expect.contains:
        out.append(
            Outcome("contains", text, _excerpt(answer), answer is not None and text in answer)
        )
    for text in expect.not_contains:
        out.append(
            Outcome(
                "notContains", text, _excerpt(answer), answer is not None and text not in answer
            )
        )
    if expect.regex is not None:
        hit = answer is not None and re.search(expect.regex, answer) is not None
        out.append(Outcome("regex", expect.regex, _excerpt(answer), hit))
    if expect.equals is not None:
        out.append(Outcome("equals", expect.equals, _excerpt(answer), answer == expect.equals))
    if expect.latency_ms_max is not None:
        lat = ex.latency_ms
        out.append(
            Outcome(
                "latencyMsMax",
                expect.latency_ms_max,
                lat,
                lat is not None and lat <= expect.latency_ms_max,
            )
        )
    if expect.json_schema is not None:
        problem = _schema_problem(expect.json_schema, answer)
        out.append(Outcome("jsonSchema", "valid", problem, problem == "valid"))
    if expect.number is not None:
        out.append(_number(expect.number, answer))
    if expect.cost_max is not None:
        cost = ex.cost
        out.append(
            Outcome("costMax", expect.cost_max, cost, cost is not None and cost <= expect.cost_max)
        )
    return out


def graded(criteria: str, verdict: Execution, passing: CheckExpect) -> Outcome:
    """A judge's grade as one outcome: the criteria asked, the judge's answer measured,
    held when the answer meets the judge's `pass` expectations."""
    ok = verdict.status == "completed" and all(o.ok for o in judge(passing, verdict))
    measured = _excerpt(verdict.result) if verdict.status == "completed" else verdict.error
    return Outcome("judge", criteria, measured, ok)


def _schema_problem(schema: dict[str, Any], answer: str | None) -> str:
    """ "valid", or the first reason the answer is not (not JSON, or where it fails)."""
    if answer is None:
        return "no answer"
    try:
        doc = json.loads(answer)
    except ValueError as e:
        return f"not JSON: {e}"
    from jsonschema.validators import validator_for

    error = next(iter(validator_for(schema)(schema).iter_errors(doc)), None)
    if error is None:
        return "valid"
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where or '(root)'}: {error.message}"[:200]


def _number(expect: NumberExpect, answer: str | None) -> Outcome:
    bounds = {k: v for k, v in expect.model_dump(by_alias=True).items() if v is not None}
    if not expect.tolerance:
        bounds.pop("tolerance", None)
    try:
        value = float((answer or "").strip())
    except ValueError:
        return Outcome("number", bounds, _excerpt(answer), False)
    ok = value == value  # NaN is no number
    if expect.equals is not None:
        ok = ok and abs(value - expect.equals) <= expect.tolerance
    if expect.min is not None:
        ok = ok and value >= expect.min
    if expect.max is not None:
        ok = ok and value <= expect.max
    return Outcome("number", bounds, value, ok)


def _excerpt(answer: str | None, limit: int = 200) -> str | None:
    if answer is None or len(answer) <= limit:
        return answer
    return answer[:limit] + "…"
