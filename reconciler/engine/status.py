"""`reconciler status`: what the state records as deployed, per environment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from reconciler import schedules
from reconciler.engine.context import register_recorded
from reconciler.engine.live import providers_of_record, read_health
from reconciler.errors import ReconcilerError
from reconciler.instances import InstanceKey
from reconciler.providers.base import HealthStatus
from reconciler.session import Session
from reconciler.state.base import AppliedRecord, StateStore


@dataclass(frozen=True)
class ScheduleStatus:
    deployment: str | None
    enabled: bool
    next_run: datetime | None
    timezone: str


@dataclass(frozen=True)
class StatusRow:
    """One recorded instance."""

    key: InstanceKey
    provider: str
    provider_id: str | None
    model: str | None
    commit: str | None
    run_id: str
    applied_at: datetime
    schedule: ScheduleStatus | None = None
    #: What its provider says now (`status --health`, the default); None: not asked.
    health: HealthStatus | None = None
    #: Why the health could not be read, when it was asked for and could not be.
    health_error: str | None = None

    @property
    def health_text(self) -> str:
        if self.health is not None:
            return self.health.health
        return "unknown" if self.health_error else "-"

    def document(self) -> dict[str, Any]:
        """The documented `status --json` row."""
        doc: dict[str, Any] = {
            "environment": self.key.environment,
            "kind": self.key.kind,
            "name": self.key.name,
            "provider": self.provider,
            "provider_id": self.provider_id,
            "model": self.model,
            "commit": self.commit,
            "run_id": self.run_id,
            "applied_at": self.applied_at.isoformat(),
            "health": self.health.health if self.health else None,
            "health_message": self.health.message if self.health else self.health_error,
        }
        if self.schedule is not None:
            nxt = self.schedule.next_run
            doc["deployment"] = self.schedule.deployment
            doc["next_run"] = nxt.isoformat() if nxt else None
            doc["next_run_local"] = (
                schedules.format_both(nxt, self.schedule.timezone) if nxt else None
            )
            doc["enabled"] = self.schedule.enabled
        return doc


@dataclass
class StatusReport:
    rows: list[StatusRow] = field(default_factory=list)


def status(
    session: Session, environments: Sequence[str] = (), *, health: bool = True
) -> StatusReport:
    with session.open_store(read_only=True) as store:
        register_recorded(session, store)
        report = collect_status(store, environments)
        if health:
            add_health(session, store, report)
        return report


def add_health(session: Session, store: StateStore, report: StatusReport) -> None:
    """Ask each row's provider for its health, configured as at the commit the row was
    applied from (see ProvidersOfRecord); a row whose health cannot be read says why
    instead."""

    if not report.rows:
        return
    try:
        providers = providers_of_record(session, store)
    except ReconcilerError as e:
        why = f"cannot read the manifests for the provider settings: {e.message}"
        report.rows[:] = [replace(r, health_error=why) for r in report.rows]
        return
    health: dict[InstanceKey, HealthStatus] = {}
    unreadable: dict[InstanceKey, str] = {}
    for env in dict.fromkeys(r.key.environment for r in report.rows):
        reads = read_health(session, providers, env, store.applied(env))
        health.update(reads.health)
        unreadable.update(reads.unreadable)
    fill_health(report, health, unreadable)


def fill_health(
    report: StatusReport,
    health: Mapping[InstanceKey, HealthStatus],
    unreadable: Mapping[InstanceKey, str],
) -> None:
    """Set each row's health from a reading (the dashboard passes its live one)."""
    report.rows[:] = [
        replace(r, health=health.get(r.key), health_error=unreadable.get(r.key))
        for r in report.rows
    ]


def collect_status(
    store: StateStore, environments: Sequence[str] = (), *, now: datetime | None = None
) -> StatusReport:
    """One row per recorded instance; schedules carry their next run time."""
    now = now or datetime.now(UTC)
    report = StatusReport()
    for env in environments or store.environments():
        for key, rec in sorted(store.applied(env).items()):
            report.rows.append(_row(key, rec, now))
    return report


def _row(key: InstanceKey, rec: AppliedRecord, now: datetime) -> StatusRow:
    spec = rec.spec
    sched = None
    if key.kind == "Schedule":
        nxt = schedules.spec_next_runs(spec, now, 1)
        sched = ScheduleStatus(
            deployment=spec.get("deployment"),
            enabled=bool(spec.get("enabled", True)),
            next_run=nxt[0] if nxt else None,
            timezone=str(spec.get("timezone", "UTC")),
        )
    return StatusRow(
        key=key,
        provider=rec.provider,
        provider_id=rec.provider_id,
        model=spec.get("model"),
        commit=rec.commit,
        run_id=rec.run_id,
        applied_at=rec.applied_at,
        schedule=sched,
    )
