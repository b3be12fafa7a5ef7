"""`reconciler schedules`: when each recorded schedule fires next, per environment, in
the schedule's own zone and in UTC. Recorded state is what runs, so that is what fires."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from reconciler import schedules as cron
from reconciler.instances import InstanceKey
from reconciler.session import Session
from reconciler.state.base import AppliedRecord

#: How many fire times each schedule shows.
NEXT_RUNS = 5


@dataclass(frozen=True)
class ScheduleRow:
    record: AppliedRecord
    next_runs: list[datetime]

    @property
    def timezone(self) -> str:
        return str(self.record.spec.get("timezone") or "UTC")

    @property
    def enabled(self) -> bool:
        return bool(self.record.spec.get("enabled", True))

    def local(self, at: datetime) -> datetime:
        try:
            return at.astimezone(ZoneInfo(self.timezone))
        except (ZoneInfoNotFoundError, ValueError):
            return at

    def document(self) -> dict[str, Any]:
        """The documented `schedules --json` row (docs/dashboard.md)."""
        spec = self.record.spec
        return {
            "environment": self.record.environment,
            "name": self.record.name,
            "deployment": spec.get("deployment"),
            "cron": spec.get("cron"),
            "interval": spec.get("interval"),
            "timezone": self.timezone,
            "enabled": self.enabled,
            "commit": self.record.commit,
            "run_id": self.record.run_id,
            "next_runs": [
                {
                    "utc": t.isoformat(),
                    "local": self.local(t).isoformat(),
                    "text": cron.format_both(t, self.timezone),
                }
                for t in self.next_runs
            ],
        }


@dataclass
class SchedulesReport:
    at: datetime
    rows: list[ScheduleRow] = field(default_factory=list)

    @property
    def valid_until(self) -> datetime | None:
        """When the first listed fire time passes (the report is stale from then on)."""
        firsts = [r.next_runs[0] for r in self.rows if r.next_runs and r.enabled]
        return min(firsts, default=None)


def schedules(session: Session, environments: Sequence[str] = ()) -> SchedulesReport:
    with session.open_store(read_only=True) as store:
        envs = environments or store.environments()
        return collect_schedules({env: store.applied(env) for env in envs})


def collect_schedules(
    applied: Mapping[str, Mapping[InstanceKey, AppliedRecord]],
    *,
    now: datetime | None = None,
    count: int = NEXT_RUNS,
) -> SchedulesReport:
    """Every recorded Schedule with its next `count` fire times (none when disabled)."""
    now = now or datetime.now(UTC)
    report = SchedulesReport(now)
    for env in applied:
        for key, rec in sorted(applied[env].items()):
            if key.kind != "Schedule":
                continue
            enabled = bool(rec.spec.get("enabled", True))
            nxt = cron.spec_next_runs(rec.spec, now, count) if enabled else []
            report.rows.append(ScheduleRow(rec, nxt))
    return report
