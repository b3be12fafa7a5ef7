"""What the agent tells notification targets: one short title and a plain-text body per
event. The notifier redacts both again before they leave the process."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from reconciler.agent.notify import Notice
from reconciler.drift import DriftItem
from reconciler.executor import EnvironmentResult

if TYPE_CHECKING:  # a report type only: the engine builds notices with this view
    from reconciler.engine.evaluate import EvalReport


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "the working tree"


def _actions(result: EnvironmentResult) -> str:
    done = Counter(r.change.action for r in result.results if r.outcome == "applied")
    return ", ".join(f"{action} {n}" for action, n in sorted(done.items())) or "nothing"


def applied(
    env: str, result: EnvironmentResult, *, commit: str | None, subject: str, trigger: str
) -> Notice:
    n = sum(1 for r in result.results if r.outcome == "applied")
    what = f"{trigger} run {result.run_id}"
    return Notice(
        "applied",
        env,
        f"reconciler: {env} applied {_short(commit)}",
        f"{env}: applied {n} change{'s' if n != 1 else ''} ({_actions(result)}) from "
        f"{_short(commit)} {subject!r} in {what}.",
    )


def failed(env: str, message: str, *, commit: str | None, run_id: str | None) -> Notice:
    where = f" in run {run_id}" if run_id else ""
    return Notice(
        "failed",
        env,
        f"reconciler: {env} failed at {_short(commit)}",
        f"{env}: applying {_short(commit)} failed{where}: {message}",
    )


def blocked(env: str, *, commit: str | None, reasons: Sequence[str]) -> Notice:
    lines = "\n".join(f"- {r}" for r in reasons) or "- (no reason given)"
    return Notice(
        "blocked",
        env,
        f"reconciler: {env} blocked at {_short(commit)}",
        f"{env}: {_short(commit)} is not applied; what is missing:\n{lines}\n"
        "The agent tries again each interval and says so again only when the commit or "
        "the reasons change.",
    )


def _item(item: DriftItem) -> str:
    if item.status == "missing":
        return f"- {item.address}: missing at the provider"
    fields = ", ".join(d.path for d in item.diff) or "fields"
    return f"- {item.address}: {fields} differ from the recorded spec"


def drifted(env: str, items: Sequence[DriftItem], *, self_heal: bool) -> Notice:
    then = (
        "selfHeal is on: the agent puts the recorded spec back."
        if self_heal
        else "selfHeal is off: run `reconciler apply --heal` to put the recorded spec back."
    )
    body = "\n".join(_item(i) for i in items)
    return Notice(
        "drifted",
        env,
        f"reconciler: {env} drifted ({len(items)} instance{'s' if len(items) != 1 else ''})",
        f"{env}: live state differs from what was applied:\n{body}\n{then}",
    )


def healed(env: str, result: EnvironmentResult) -> Notice:
    n = sum(1 for r in result.results if r.outcome == "applied")
    names = ", ".join(r.change.address for r in result.results if r.outcome == "applied")
    return Notice(
        "healed",
        env,
        f"reconciler: {env} healed",
        f"{env}: put {n} instance{'s' if n != 1 else ''} back to the recorded spec "
        f"({names}) in heal run {result.run_id}.",
    )


def eval_notice(report: EvalReport, failures: Sequence[str]) -> Notice:
    """A run of an eval that did not pass (with the first failed expectations and what
    they measured), or one that passed after one that did not."""
    rate = "n/a" if report.pass_rate is None else f"{report.pass_rate:.3f}"
    where = f"eval {report.eval} on deployment.{report.deployment} in {report.environment}"
    if report.outcome == "passed":
        return Notice(
            "eval_recovered",
            report.environment,
            f"reconciler: {where} passes again",
            f"{where}: passed, pass rate {rate} (min {report.min_pass_rate}), "
            f"{report.calls} call(s), digest {report.digest}.",
        )
    shown = "\n".join(f"- {f}" for f in failures[:5])
    more = f"\n- … and {len(failures) - 5} more" if len(failures) > 5 else ""
    return Notice(
        "eval_failed",
        report.environment,
        f"reconciler: {where} {report.outcome}",
        f"{where}: {report.outcome.upper()} ({report.reason}); pass rate {rate} "
        f"(min {report.min_pass_rate}), {report.passed} of {report.calls} call(s) passed, "
        f"digest {report.digest}.\n{shown}{more}".rstrip(),
    )
