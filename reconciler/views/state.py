"""`state migrate` reports."""

from __future__ import annotations

from reconciler.state.migrate import MigrationReport

_KEY = {
    "copied": "fingerprint key copied",
    "from-environment": "fingerprint key from RECONCILER_FINGERPRINT_KEY (not copied)",
    "none": "no fingerprint key to copy",
}


def human(report: MigrationReport) -> str:
    lines = [
        f"  {e.environment}: serial {e.serial}, {e.applied} applied, {_n(e.runs, 'run')}, "
        f"{_n(e.changes, 'change')}"
        for e in report.environments
    ]
    lines.append(
        f"migrated {_n(len(report.environments), 'environment')} from {report.source} to "
        f"{report.target}; {_KEY[report.fingerprint_key]}"
    )
    if report.executions:
        lines.append(f"copied {_n(report.executions, 'execution')}")
    return "".join(line + "\n" for line in lines)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
