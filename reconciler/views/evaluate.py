"""`eval`: the outcome, the measured pass rate beside its bound, and why."""

from __future__ import annotations

import json as _json
from typing import Any

from reconciler.engine.evaluate import EvalReport
from reconciler.views.text import join_lines


def human(r: EvalReport) -> str:
    rate = "n/a" if r.pass_rate is None else f"{r.pass_rate:.3f}"
    return join_lines(
        [
            f"eval {r.eval} on deployment.{r.deployment} in {r.environment}: {r.outcome.upper()}"
            f" ({r.reason})",
            f"  {r.cases} case(s) × {r.repeat} from {r.dataset}: {r.calls} call(s), "
            f"{r.passed} passed, pass rate {rate} (min {r.min_pass_rate}), cost "
            f"{'unknown' if r.cost is None else f'{r.cost:.6g}'}",
            f"  digest {r.digest}, eval {r.eval_digest}",
            *([_baseline(r.baseline)] if r.baseline is not None else []),
            *(
                ["  advisory: run for a pull request, so never counted as promotion evidence"]
                if r.advisory
                else []
            ),
        ]
    )


def json(r: EvalReport) -> str:
    return _json.dumps(r.document(), indent=2) + "\n"


def _baseline(b: dict[str, Any]) -> str:
    env, digest, rate = b.get("environment"), b.get("digest"), b.get("rate")
    if digest is None:
        return f"  baseline {env}: nothing applied there"
    short = str(digest).removeprefix("sha256:")[:12]
    if b.get("same"):
        return f"  baseline {env}: runs this same digest ({short})"
    measured = "never measured" if rate is None else f"pass rate {float(rate):.3f}"
    return f"  baseline {env}: {short}, {measured}"


def marker(r: EvalReport) -> str:
    """One comment per eval and environment on a pull request, updated in place."""
    return f"<!-- reconciler eval {r.eval} {r.environment} -->"


ICONS = {"passed": "✅", "failed": "❌", "inconclusive": "⚠️", "stopped": "⏹️"}


def markdown(r: EvalReport) -> str:
    """The pull-request comment: the outcome, the measured rate beside its bar, and
    whether it counts."""
    rate = "n/a" if r.pass_rate is None else f"{r.pass_rate:.3f}"
    cost = "unknown" if r.cost is None else f"{r.cost:.6g}"
    counts = (
        "**Advisory**: run for this pull request, with its cases and thresholds; it is "
        "never counted as promotion evidence."
        if r.advisory
        else "Recorded as evidence for promotion (the deploy branch's run)."
    )
    lines = [
        marker(r),
        f"### {ICONS.get(r.outcome, '')} Eval `{r.eval}` on `deployment.{r.deployment}` in "
        f"`{r.environment}`: {r.outcome}",
        "",
        "| calls | passed | pass rate | bar | min samples | cost |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {r.calls} | {r.passed} | {rate} | {r.min_pass_rate} | {r.min_samples} | {cost} |",
        "",
        f"{r.reason}",
        *([_baseline(r.baseline).strip()] if r.baseline is not None else []),
        "",
        f"Digest `{r.digest}`, eval `{r.eval_digest}`. {counts}",
    ]
    return "\n".join(lines) + "\n"
