"""`reconciler drift` and `apply --heal`: live provider state versus what was recorded,
and putting the recorded spec back where they differ."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from reconciler import drift as detection
from reconciler.commands.context import applied_by, open_store
from reconciler.commands.live import providers_of_record, read_health
from reconciler.config import Settings
from reconciler.drift import DriftReport
from reconciler.errors import EXIT_ERROR, EXIT_OK
from reconciler.executor import EnvironmentResult, ProgressFn


def drift(settings: Settings, environments: Sequence[str] = ()) -> DriftReport:
    """Drift of every recorded instance, and each one's health."""
    with open_store(settings, read_only=True) as store:
        providers = providers_of_record(settings, store)
        report = detection.detect_drift(
            store,
            providers,
            repo_root=settings.repo,
            env=settings.env,
            environments=environments,
        )
        for env in report.environments:
            reads = read_health(settings, providers, env, store.applied(env))
            report.health.update(reads.health)
            report.health_errors.update(reads.unreadable)
        return report


@dataclass
class HealReport:
    results: list[EnvironmentResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_ERROR if any(r.outcome == "failed" for r in self.results) else EXIT_OK


def heal(
    settings: Settings,
    environments: Sequence[str] = (),
    *,
    break_lock: bool = False,
    parallelism: int | None = None,
    progress: ProgressFn | None = None,
) -> HealReport:
    """Re-apply the recorded spec of every drifted or missing instance (trigger `heal`)."""
    with open_store(settings) as store:
        providers = providers_of_record(settings, store)
        found = detection.detect_drift(
            store,
            providers,
            repo_root=settings.repo,
            env=settings.env,
            environments=environments,
        )
        results = detection.heal(
            store,
            found,
            providers,
            repo_root=settings.repo,
            env=settings.env,
            break_lock=break_lock,
            parallelism=parallelism or settings.parallelism,
            progress=progress,
            applied_by=applied_by(settings),
        )
    return HealReport(results)
