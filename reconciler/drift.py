"""Drift: what the providers run now versus what the state recorded as applied.

Only fields the recorded body has are compared (a provider may add its own, like an
id). Secret values are compared by keyed fingerprint and never shown. `heal` puts the
recorded spec back (trigger `heal`); changing to the manifests is `apply`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reconciler.errors import EXIT_CHANGES, EXIT_OK, ReconcilerError
from reconciler.executor import (
    EnvironmentResult,
    ProgressFn,
    RunContext,
    execute_environment,
    instance_from_record,
)
from reconciler.instances import Instance, InstanceKey, ProviderConfig, secret_ref, secret_refs
from reconciler.plan import SENSITIVE, Change, EnvironmentPlan, FieldDiff, field_diff
from reconciler.providers.pool import ProviderPool
from reconciler.state.base import AppliedRecord, StateStore, fingerprint

Status = Literal["in-sync", "drifted", "missing", "unreadable"]


@dataclass
class DriftItem:
    key: InstanceKey
    provider: str
    status: Status
    diff: list[FieldDiff] = field(default_factory=list)
    error: str | None = None

    @property
    def address(self) -> str:
        return self.key.address


@dataclass
class DriftReport:
    environments: dict[str, list[DriftItem]] = field(default_factory=dict)
    #: Each environment's state serial when its reading began: a heal based on the
    #: reading is refused (state moved) once anything was recorded since, e.g. by a run
    #: that had changed the provider but not yet recorded it while it was read.
    serials: dict[str, int] = field(default_factory=dict)

    @property
    def drifted(self) -> list[DriftItem]:
        return [i for items in self.environments.values() for i in items if i.status != "in-sync"]

    @property
    def exit_code(self) -> int:
        return EXIT_CHANGES if self.drifted else EXIT_OK


def _normalise_live(live: Mapping[str, Any], rec: AppliedRecord, key: bytes) -> dict[str, Any]:
    """Live body limited to recorded fields, with secret values turned back into refs."""
    out = {k: live.get(k) for k in rec.spec}
    refs = set(secret_refs(rec.spec))
    env_live = out.get("env")
    env_rec = rec.spec.get("env")
    if refs and isinstance(env_live, dict) and isinstance(env_rec, dict):
        fixed = dict(env_live)
        for var, recorded in env_rec.items():
            name = secret_ref(recorded)
            if name is None:
                continue
            value = env_live.get(var)
            if value == recorded:  # the provider keeps references (local)
                continue
            expected = rec.secret_fingerprints.get(name)
            if isinstance(value, str) and expected and fingerprint(key, value) == expected:
                fixed[var] = recorded
            else:
                fixed[var] = {"secretEnv": name, "changed": SENSITIVE}
        out["env"] = fixed
    return out


def detect_drift(
    store: StateStore,
    providers: Mapping[str, Mapping[str, ProviderConfig]],
    *,
    repo_root: Path,
    env: Mapping[str, str],
    environments: Sequence[str] = (),
) -> DriftReport:
    """Read every recorded instance from its provider and compare field by field."""
    report = DriftReport()
    key = store.fingerprint_key(create=False) or b""  # none stored: nothing to match
    for envname in environments or store.environments():
        clients = ProviderPool.from_entry_points(
            providers.get(envname, {}), repo_root=repo_root, env=env
        )
        items: list[DriftItem] = []
        report.serials[envname] = store.serial(envname)
        try:
            for k, rec in sorted(store.applied(envname).items()):
                try:
                    live = clients.get(rec.provider).read(
                        k.kind, k.name, k.environment, rec.provider_id
                    )
                except ReconcilerError as e:
                    items.append(DriftItem(k, rec.provider, "unreadable", error=e.message))
                    continue
                if live is None:
                    items.append(DriftItem(k, rec.provider, "missing"))
                    continue
                diff = field_diff(rec.spec, _normalise_live(live.body, rec, key))
                items.append(DriftItem(k, rec.provider, "drifted" if diff else "in-sync", diff))
        finally:
            clients.close()
        report.environments[envname] = items
    return report


def heal_context(store: StateStore, environment: str) -> RunContext:
    """A heal puts back what was applied: its run carries the commit and the policy of
    the environment's last applied run, never the commit checked out now. An applied
    heal run becomes the last applied run, which the gate takes as the recorded state
    (the start of the commits a change must cover) and the policy of record; recording
    the commit checked out now there would let a later apply skip its unapproved commits
    (and fall back to a policy read from git). With no applied run yet, no commit."""
    last = store.last_applied_run(environment)
    return RunContext(
        commit=last.commit if last is not None else None,
        trigger="heal",
        policy=last.policy if last is not None else None,
    )


def heal(
    store: StateStore,
    report: DriftReport,
    providers: Mapping[str, Mapping[str, ProviderConfig]],
    *,
    repo_root: Path,
    env: Mapping[str, str],
    commit: str | None,
    parallelism: int = 8,
    break_lock: bool = False,
    progress: ProgressFn | None = None,
) -> list[EnvironmentResult]:
    """Re-apply the recorded spec of every drifted or missing instance. `commit` (what is
    checked out) is not recorded: each run records its environment's last applied run's
    commit and policy (`heal_context`)."""
    results = []
    for envname, items in report.environments.items():
        todo = [i for i in items if i.status in ("drifted", "missing")]
        if not todo:
            continue
        recorded = store.applied(envname)
        desired: dict[InstanceKey, Instance] = {}
        changes = []
        for item in todo:
            rec = recorded[item.key]
            desired[item.key] = instance_from_record(rec)
            changes.append(
                Change(
                    "create" if item.status == "missing" else "update",
                    item.key,
                    rec.provider,
                    rec.spec,
                    rec.spec,
                    diff=item.diff,
                    secret_fingerprints={
                        k: v for k, v in rec.secret_fingerprints.items() if v is not None
                    },
                )
            )
        serial = report.serials.get(envname)
        plan = EnvironmentPlan(
            envname, store.serial(envname) if serial is None else serial, False, changes
        )
        results.append(
            execute_environment(
                store,
                plan,
                desired=desired,
                providers=providers.get(envname, {}),
                repo_root=repo_root,
                env=env,
                context=heal_context(store, envname),
                parallelism=parallelism,
                break_lock=break_lock,
                progress=progress,
            )
        )
    return results
