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
        f"  {e.environment}: serial {e.serial}, {e.applied} applied, {e.runs} runs, "
        f"{e.changes} changes"
        for e in report.environments
    ]
    n = len(report.environments)
    lines.append(
        f"migrated {n} environment{'' if n == 1 else 's'} from {report.source} to "
        f"{report.target}; {_KEY[report.fingerprint_key]}"
    )
    return "".join(line + "\n" for line in lines)
