"""Live reads for the overview: drift (live body versus recorded) and each recorded
instance's health, both from the providers. Slow and networked: the dashboard reads
them on a background interval, never while answering a request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from reconciler.config import Settings
from reconciler.drift import DriftReport, detect_drift
from reconciler.errors import ReconcilerError
from reconciler.instances import InstanceKey
from reconciler.manifests import Desired
from reconciler.providers import HealthStatus, Provider, make_provider
from reconciler.state.base import AppliedRecord, StateStore


@dataclass(frozen=True)
class LiveReport:
    """What the providers said, and when they were asked."""

    at: datetime
    drift: DriftReport
    health: dict[InstanceKey, HealthStatus] = field(default_factory=dict)
    #: Instances whose health could not be read, and why.
    unreadable: dict[InstanceKey, str] = field(default_factory=dict)


def read_live(
    settings: Settings,
    store: StateStore,
    desired: Desired,
    environments: Sequence[str] = (),
    *,
    now: datetime | None = None,
) -> LiveReport:
    """Drift of every recorded instance, then the health of each (in parallel)."""
    at = now or datetime.now(UTC)
    drift = detect_drift(
        store,
        desired.providers,
        repo_root=settings.repo,
        env=settings.env,
        environments=environments,
    )
    report = LiveReport(at, drift)
    for env in environments or store.environments():
        read_health(settings, desired, env, store.applied(env), report)
    drift.health.update(report.health)  # `drift` documents carry health too
    drift.health_errors.update(report.unreadable)
    return report


@dataclass
class HealthReads:
    """Each recorded instance's health as its provider says, or why it could not say."""

    health: dict[InstanceKey, HealthStatus] = field(default_factory=dict)
    unreadable: dict[InstanceKey, str] = field(default_factory=dict)


def read_health(
    settings: Settings,
    desired: Desired,
    env: str,
    records: Mapping[InstanceKey, AppliedRecord],
    into: HealthReads | LiveReport | None = None,
) -> HealthReads | LiveReport:
    """Ask each recorded instance's provider for its health, `settings.parallelism` at
    a time; a provider that is gone from the manifests or fails is `unreadable`."""
    out: HealthReads | LiveReport = HealthReads() if into is None else into
    configs = desired.providers.get(env, {})
    made: dict[str, Provider] = {}
    try:
        for name in {r.provider for r in records.values()} & set(configs):
            try:
                made[name] = make_provider(configs[name], repo_root=settings.repo, env=settings.env)
            except ReconcilerError as e:
                for key, rec in records.items():
                    if rec.provider == name:
                        out.unreadable[key] = e.message

        def one(rec: AppliedRecord) -> tuple[InstanceKey, HealthStatus | str]:
            provider = made.get(rec.provider)
            if provider is None:
                return rec.key, f"provider {rec.provider!r} is no longer declared for {env!r}"
            try:
                return rec.key, provider.status(rec.kind, rec.name, env, rec.provider_id)
            except ReconcilerError as e:
                return rec.key, e.message

        todo = [r for k, r in records.items() if k not in out.unreadable]
        with ThreadPoolExecutor(max_workers=settings.parallelism) as pool:
            for key, got in pool.map(one, todo):
                if isinstance(got, HealthStatus):
                    out.health[key] = got
                else:
                    out.unreadable[key] = got
    finally:
        for provider in made.values():
            provider.close()
    return out
