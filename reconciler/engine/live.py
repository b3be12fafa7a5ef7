"""Live reads: drift (live body versus recorded) and each recorded instance's health,
both from the providers, with the provider settings of record (`ProvidersOfRecord`,
an invariant of the gate: docs/design.md, "Live reads go where the objects were
written"). Slow and networked: the dashboard reads them on a background interval,
never while answering a request."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from reconciler.drift import DriftReport, detect_drift
from reconciler.errors import ReconcilerError
from reconciler.instances import InstanceKey, ProviderConfig
from reconciler.load import Loaded
from reconciler.manifests import Desired
from reconciler.providers import HealthStatus, Provider
from reconciler.session import Session
from reconciler.state.base import AppliedRecord, StateStore


@dataclass(frozen=True)
class LiveReport:
    """What the providers said, and when they were asked."""

    at: datetime
    drift: DriftReport
    health: dict[InstanceKey, HealthStatus] = field(default_factory=dict)
    #: Instances whose health could not be read, and why.
    unreadable: dict[InstanceKey, str] = field(default_factory=dict)


#: Provider settings by environment, then by provider name.
Providers = Mapping[str, Mapping[str, ProviderConfig]]


class ProvidersOfRecord:
    """The provider settings each environment's recorded objects were written with:
    those of the commit it was last applied from, loaded once per commit.

    Live reads (drift, health, heal) use these, never a branch's newest commit: that
    one may be blocked by the gate, and a commit that only moves a provider's
    `baseUrl` or credential variable changes no plan, so no gate ever looks at it.
    Reading with it would send the credential (and a heal, the recorded specs)
    somewhere nobody approved; the recorded objects are not there anyway."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._loaded: Loaded | None = None

    def get(
        self,
        store: StateStore,
        current: Loaded | None = None,
        *,
        uncommitted: bool = False,
        environments: Collection[str] | None = None,
    ) -> Providers:
        """By environment; one that was never applied has none (it holds no recorded
        object to read). `current` is reused when it is that commit; a commit that no
        longer loads raises its ReconcilerError.

        One last applied from a working tree (no commit: a plain directory, `watch
        --apply`) has no settings to find again. It is read with `current`'s when
        `uncommitted` (the CLI, reading its operator's own checkout) or when `current`
        has no commit either (a plain directory: no history to distrust); else it has
        none. `environments`: only these (the agent's pass: one, not every recorded one)."""
        out: dict[str, Mapping[str, ProviderConfig]] = {}
        for env in store.environments() if environments is None else environments:
            last = store.last_applied_run(env)
            if last is None:
                continue
            if last.commit is not None:
                out[env] = self._at(last.commit, current).providers.get(env, {})
            elif current is not None and (uncommitted or current.commit is None):
                out[env] = current.desired.providers.get(env, {})
        return out

    def _at(self, commit: str, current: Loaded | None) -> Desired:
        for loaded in (current, self._loaded):
            if loaded is not None and loaded.commit == commit and not loaded.dirty:
                return loaded.desired
        self._loaded = self.session.load(commit)  # registers its secrets for redaction
        return self._loaded.desired


def providers_of_record(session: Session, store: StateStore) -> Providers:
    """The CLI's: the settings of record, and the checkout's own for an environment
    last applied from a working tree."""
    return ProvidersOfRecord(session).get(store, session.load(), uncommitted=True)


def drift_of(
    session: Session, store: StateStore, providers: Providers, environments: Sequence[str] = ()
) -> DriftReport:
    """Drift of every recorded instance of `environments` (all: none given), read with the
    session's provider settings and redactor."""
    return detect_drift(
        store,
        providers,
        repo_root=session.settings.repo,
        env=session.settings.env,
        register=session.redactor.add,
        environments=environments,
    )


def read_live(
    session: Session,
    store: StateStore,
    providers: Providers,
    environments: Sequence[str] = (),
    *,
    now: datetime | None = None,
) -> LiveReport:
    """Drift of every recorded instance, then the health of each (in parallel)."""
    at = now or datetime.now(UTC)
    drift = drift_of(session, store, providers, environments)
    report = LiveReport(at, drift)
    for env in environments or store.environments():
        read_health(session, providers, env, store.applied(env), report)
    drift.health.update(report.health)  # `drift` documents carry health too
    drift.health_errors.update(report.unreadable)
    return report


@dataclass
class HealthReads:
    """Each recorded instance's health as its provider says, or why it could not say."""

    health: dict[InstanceKey, HealthStatus] = field(default_factory=dict)
    unreadable: dict[InstanceKey, str] = field(default_factory=dict)


def read_health(
    session: Session,
    providers: Providers,
    env: str,
    records: Mapping[InstanceKey, AppliedRecord],
    into: HealthReads | LiveReport | None = None,
) -> HealthReads | LiveReport:
    """Ask each recorded instance's provider for its health, the session's parallelism at a
    time; a provider that is gone from the manifests or fails is `unreadable`."""
    out: HealthReads | LiveReport = HealthReads() if into is None else into
    configs = providers.get(env, {})
    made: dict[str, Provider] = {}
    try:
        for name in {r.provider for r in records.values()} & set(configs):
            try:
                made[name] = session.provider(configs[name])
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
        with ThreadPoolExecutor(max_workers=session.settings.parallelism) as pool:
            for key, got in pool.map(one, todo):
                if isinstance(got, HealthStatus):
                    out.health[key] = got
                else:
                    out.unreadable[key] = got
    finally:
        for provider in made.values():
            provider.close()
    return out
