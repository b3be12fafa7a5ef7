"""`apply` (and `apply --heal`) reports: a line per environment, the job summary."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TextIO

from reconciler.engine.apply import ApplyReport, Watchers
from reconciler.engine.drift import HealReport
from reconciler.engine.rollback import RevertProposal
from reconciler.executor import ChangeResult, EnvironmentResult, HealthEvent
from reconciler.instances import InstanceKey
from reconciler.redaction import Redactor
from reconciler.views.text import join_lines
from reconciler.vocabulary import READY


def human(report: ApplyReport) -> str:
    lines: list[str] = []
    for r in report.results:
        g = report.gates.get(r.environment)
        if r.outcome == "noop":
            lines.append(f"{r.environment}: no changes")
        elif r.outcome == "blocked":
            lines.append(f"{r.environment}: BLOCKED: {r.message}")
            if g is not None and g.verdict is not None:
                lines.extend(f"    {line}" for line in g.verdict.explain())
            if g is not None:
                lines.extend(f"    next: {fix}" for fix in dict.fromkeys(g.fixes))
        else:
            c = r.counts()
            line = f"{r.environment}: {r.outcome} (run {r.run_id}): {c['applied']} applied"
            if c["failed"] or c["skipped"]:
                line += f", {c['failed']} failed, {c['skipped']} skipped"
            lines.append(line)
            lines.extend(
                f"    {res.change.address}: {res.outcome}: {res.error}"
                for res in r.results
                if res.outcome != "applied"
            )
            checked = bool(r.message and r.message.startswith("checks failed"))
            if checked:
                lines.append(f"    {r.message}")
            if r.restored:
                why = "a check's onFail: rollback" if checked else "--rollback-on-failure"
                lines.append(f"    restored {len(r.restored)} change(s) ({why})")
            revert = report.reverts.get(r.environment)
            if revert is not None:
                lines.extend(f"    {line}" for line in revert_lines(revert))
    return join_lines(lines)


def revert_lines(revert: RevertProposal) -> list[str]:
    """The revert pull request opened, or why none was and what opens it."""
    shas = ", ".join(s[:12] for s in revert.reverted)
    if revert.pull_request is not None:
        return [
            f"revert pull request #{revert.pull_request} ({revert.branch}, reverts {shas}): "
            f"{revert.pull_request_url}"
        ]
    return [
        f"git still declares what failed: no revert pull request ({revert.reason})",
        f"next: {revert.command}",
    ]


def summary_markdown(
    results: Iterable[EnvironmentResult], reverts: Mapping[str, RevertProposal] | None = None
) -> str:
    """The GitHub Actions job summary of an apply."""
    rows = [
        "### reconciler apply",
        "",
        "| environment | outcome | run | changes |",
        "|---|---|---|---|",
    ]
    for r in results:
        c = r.counts()
        rows.append(
            f"| {r.environment} | {r.outcome} | {r.run_id or ''} | "
            f"{c['applied']} applied, {c['failed']} failed |"
        )
    for env, revert in (reverts or {}).items():
        if revert.pull_request is not None:
            rows.append(
                f"\n**{env}**: a check failed and was rolled back; revert pull request "
                f"[#{revert.pull_request}]({revert.pull_request_url})"
            )
        else:
            rows.append(
                f"\n**{env}**: a check failed and was rolled back; no revert pull request "
                f"({revert.reason}): `{revert.command}`"
            )
    return "\n".join(rows) + "\n"


def heal_human(report: HealReport) -> str:
    if not report.results:
        return "nothing drifted: nothing to heal\n"
    lines = []
    for r in report.results:
        c = r.counts()
        lines.append(
            f"{r.environment}: healed {c['applied']}, failed {c['failed']} (run {r.run_id})"
        )
    return join_lines(lines)


@contextmanager
def progress(stream: TextIO, redactor: Redactor) -> Iterator[Watchers]:
    """A live counter and a line per instance waiting to become Healthy on a terminal;
    elsewhere (CI, a pipe) the executor's log lines: one per change, one per health
    change of a waiting instance. A provider's health message passes `redactor`."""
    if not stream.isatty():
        yield Watchers()
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

    console = Console(file=stream, soft_wrap=True, highlight=False)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("applying", total=None)
        counts = {"applied": 0, "failed": 0, "skipped": 0}
        waiting: dict[InstanceKey, TaskID] = {}

        def update(res: ChangeResult) -> None:
            counts[res.outcome] += 1
            bar.update(
                task,
                description=f"{res.change.environment}: {counts['applied']} applied, "
                f"{counts['failed']} failed — last {res.change.address}",
            )

        def health(ev: HealthEvent) -> None:
            key = ev.change.key
            line = waiting.get(key)
            if ev.health is None or ev.health.health in READY:
                if line is not None:
                    bar.remove_task(waiting.pop(key))
                return
            text = f"  {key.environment}: {key.address} waiting: {ev.health.health}"
            if ev.health.message:
                message = ev.health.message
                text += f" ({redactor.redact(message)})"
            if line is None:
                waiting[key] = bar.add_task(text, total=None)
            else:
                bar.update(line, description=text)

        yield Watchers(update, health)
