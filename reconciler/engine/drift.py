"""`reconciler drift` and `apply --heal`: live provider state versus what was recorded,
and putting the recorded spec back where they differ."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from reconciler import drift as detection
from reconciler.drift import DriftReport
from reconciler.engine.context import applied_by
from reconciler.engine.live import drift_of, providers_of_record, read_health
from reconciler.errors import EXIT_ERROR, EXIT_OK
from reconciler.executor import EnvironmentResult, ProgressFn
from reconciler.session import Session


def drift(session: Session, environments: Sequence[str] = ()) -> DriftReport:
    """Drift of every recorded instance, and each one's health."""
    with session.open_store(read_only=True) as store:
        providers = providers_of_record(session, store)
        report = drift_of(session, store, providers, environments)
        for env in report.environments:
            reads = read_health(session, providers, env, store.applied(env))
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
    session: Session,
    environments: Sequence[str] = (),
    *,
    break_lock: bool = False,
    progress: ProgressFn | None = None,
) -> HealReport:
    """Re-apply the recorded spec of every drifted or missing instance (trigger `heal`)."""
    with session.open_store() as store:
        providers = providers_of_record(session, store)
        found = drift_of(session, store, providers, environments)
        results = detection.heal(
            store,
            found,
            providers,
            repo_root=session.settings.repo,
            env=session.settings.env,
            register=session.redactor.add,
            break_lock=break_lock,
            parallelism=session.settings.parallelism,
            progress=progress,
            applied_by=applied_by(session),
        )
    return HealReport(results)
