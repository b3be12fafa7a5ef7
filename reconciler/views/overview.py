"""`overview` reports: per environment and the promotion matrix (docs/dashboard.md)."""

from __future__ import annotations

import json as _json
from typing import Any

from reconciler.engine.overview import FORMAT_VERSION, Cell, EnvironmentOverview, OverviewReport
from reconciler.views.text import join_lines, short


def document(report: OverviewReport) -> dict[str, Any]:
    """The documented `overview --json` document, also served at /api/overview."""
    return {
        "format_version": FORMAT_VERSION,
        "ref": report.ref,
        "commit": report.commit,
        "generated_at": report.generated_at.isoformat(),
        "live_as_of": report.live_as_of.isoformat() if report.live_as_of else None,
        "verdicts_as_of": report.verdicts_as_of.isoformat() if report.verdicts_as_of else None,
        "environments": [e.document() for e in report.environments],
        "matrix": {
            "environments": report.chain,
            "rows": [
                {
                    "name": r.name,
                    "cells": {env: c.document() if c else None for env, c in r.cells.items()},
                }
                for r in report.rows
            ],
        },
    }


def json(report: OverviewReport) -> str:
    return _json.dumps(document(report), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def environment_lines(e: EnvironmentOverview) -> list[str]:
    """What a person reads about one environment, most important first."""
    head = e.name + (" (protected)" if e.protected else "")
    lines = [head + (f": {e.description}" if e.description else "")]
    run = e.last_run
    if run is None:
        lines.append("  last run: none")
    else:
        r = run.run
        by = f", PR #{r.pull_request}" if r.pull_request is not None else ""
        by += f", approved by {', '.join(r.approvers)}" if r.approvers else ""
        lines.append(
            f"  last run: {r.id} {r.trigger} {r.outcome} at "
            f"{r.started_at.isoformat(timespec='seconds')} commit {short(r.commit)}{by}"
        )
    if e.live is not None:
        lv = e.live
        lines.append(
            f"  {lv.in_sync} in sync, {lv.drifted + lv.missing} drifted, {lv.degraded} degraded"
            + (f", {lv.unreadable} unreadable" if lv.unreadable else "")
        )
    pending = ", ".join(f"{n} to {a}" for a, n in e.pending.items() if n)
    lines.append(f"  pending: {pending or 'nothing'}")
    lines.extend(f"  blocked: {why}" for why in e.blocked)
    for label, window in (("deploy window", e.window), ("head's window", e.head_window)):
        if window is not None:
            w = window.document()
            state = "open" if window.open else "closed"
            lines.append(
                f"  {label}: {state} ({window.reason})"
                + (f", opens {w['next_open_local']}" if w["next_open_local"] else "")
                + f"; policy of {window.policy}"
            )
    return lines


def cell_text(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    text = f"{cell.model} {cell.prompt or ''}".strip() if cell.deployed else "(not deployed)"
    if cell.health and cell.health != "Healthy":
        text += f" [{cell.health}]"
    if cell.drift and cell.drift != "in-sync":
        text += f" [{cell.drift}]"
    if cell.pending:
        text += f" ({cell.pending} pending)"
    p = cell.promotion
    if p is not None and not p.current:
        text += " [eligible]" if p.eligible else " [not eligible]"
    return ("* " if cell.differs else "") + text


def human(report: OverviewReport) -> str:
    lines = [f"Deploy branch {report.ref or '(working tree)'} at {short(report.commit)}"]
    if report.live_as_of is not None:
        lines.append(f"Live state as of {report.live_as_of.isoformat(timespec='seconds')}")
    for e in report.environments:
        lines.append("")
        lines.extend(environment_lines(e))
    if report.rows:
        lines += ["", "Promotion matrix (* differs from the previous environment):"]
        table = [[r.name, *(cell_text(r.cells.get(env)) for env in report.chain)]
                 for r in report.rows]  # fmt: skip
        head = ["deployment", *report.chain]
        widths = [max(len(row[i]) for row in [head, *table]) for i in range(len(head))]
        for row in [head, *table]:
            lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        lines.extend(
            f"  {r.name} in {env}: not eligible from {c.promotion.source}: {c.promotion.reason}"
            for r in report.rows
            for env, c in r.cells.items()
            if c is not None and c.promotion is not None and not c.promotion.eligible
            and not c.promotion.current
        )  # fmt: skip
    return join_lines(lines)
