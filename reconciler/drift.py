"""Drift: what the providers run now versus what the state recorded as applied.

Only fields the recorded body has are compared (a provider may add its own, like an
id). Secret values are compared by keyed fingerprint and never shown. `heal` puts the
recorded spec back (trigger `heal`); changing to the manifests is `apply`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from reconciler.errors import EXIT_CHANGES, EXIT_OK, ReconcilerError
from reconciler.executor import (
    EnvironmentResult,
    ProgressFn,
    RunContext,
    RunRequest,
    execute_environment,
    instance_from_record,
)
from reconciler.instances import Instance, InstanceKey, ProviderConfig, secret_ref, secret_refs
from reconciler.log import MIN_SECRET_LENGTH, is_secret
from reconciler.plan import SENSITIVE, Change, EnvironmentPlan, FieldDiff, field_diff
from reconciler.providers.base import HealthStatus
from reconciler.providers.pool import ProviderPool, entry_point_factory
from reconciler.redaction import Register, to_backstop
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
    #: Each recorded instance's health as its provider says (`drift` reads it too).
    health: dict[InstanceKey, HealthStatus] = field(default_factory=dict)
    #: Instances whose health could not be read, and why.
    health_errors: dict[InstanceKey, str] = field(default_factory=dict)

    @property
    def drifted(self) -> list[DriftItem]:
        return [i for items in self.environments.values() for i in items if i.status != "in-sync"]

    @property
    def exit_code(self) -> int:
        return EXIT_CHANGES if self.drifted else EXIT_OK


def _normalise_live(
    live: Mapping[str, Any],
    rec: AppliedRecord,
    key: bytes,
    env: Mapping[str, str],
    register: Register,
) -> dict[str, Any]:
    """Live body limited to recorded fields, with secret values turned back into refs
    and every other appearance of a secret value masked (keys included)."""
    out = {k: live.get(k) for k in rec.spec}
    env_rec = rec.spec.get("env")
    secrets = {env[n] for n in secret_refs(rec.spec) if env.get(n)}
    if isinstance(env_rec, dict) and "env" in out:
        out["env"] = _env_mapping(out["env"])
        env_live = out["env"]
        if isinstance(env_live, dict):
            out["env"] = _env_refs(env_live, env_rec, rec, key, secrets)
    register(secrets)
    hidden: dict[str, Any] = _hide(out, rec.spec, secrets)
    return hidden


def _env_mapping(value: Any) -> Any:
    """`env` as a mapping: APIs often answer with a list of `{name, value}` instead."""
    if not isinstance(value, list):
        return value
    items = [i for i in value if isinstance(i, dict) and isinstance(i.get("name"), str)]
    if len(items) != len(value):
        return value
    out: dict[str, Any] = {}
    for item in items:
        rest = {k: v for k, v in item.items() if k != "name"}
        out[item["name"]] = rest["value"] if set(rest) == {"value"} else rest
    return out


def _env_refs(
    env_live: Mapping[str, Any],
    env_rec: Mapping[str, Any],
    rec: AppliedRecord,
    key: bytes,
    secrets: set[str],
) -> dict[str, Any]:
    """Live env with each secret variable's value replaced by its reference (or by a
    `changed` marker); whatever value sits there joins `secrets`, matching or not."""
    fixed = dict(env_live)
    for var, recorded in env_rec.items():
        name = secret_ref(recorded)
        if name is None or var not in env_live:
            continue
        value = env_live[var]
        if value == recorded:  # the provider keeps references (local)
            continue
        if isinstance(value, str):
            secrets.add(value)
        expected = rec.secret_fingerprints.get(name)
        if isinstance(value, str) and expected and fingerprint(key, value) == expected:
            fixed[var] = recorded
        else:
            fixed[var] = {"secretEnv": name, "changed": SENSITIVE}
    return fixed


def _holds(text: str, secrets: Collection[str]) -> bool:
    """True when `text` is, or contains, a secret value (short ones only when equal)."""
    if text in secrets or is_secret(text):
        return True
    return any(len(s) >= MIN_SECRET_LENGTH and s in text for s in secrets)


_ABSENT: Any = object()


def _hide(live: Any, recorded: Any, secrets: Collection[str]) -> Any:
    """`live` with every string (value or key) holding a secret masked; parts equal to
    the recorded ones are left as they are (they show in no diff)."""
    if live == recorded:
        return live
    if isinstance(live, str):
        return SENSITIVE if _holds(live, secrets) else live
    if isinstance(live, int | float) and not isinstance(live, bool):
        return SENSITIVE if _holds(json.dumps(live), secrets) else live
    if isinstance(live, dict):
        rec = recorded if isinstance(recorded, dict) else {}
        out: dict[Any, Any] = {}
        for k, v in live.items():
            shown = k
            if isinstance(k, str) and _holds(k, secrets):
                shown = SENSITIVE
                while shown in out or shown in live:
                    shown += "*"
            out[shown] = _hide(v, rec.get(k, _ABSENT), secrets)
        return out
    if isinstance(live, list):
        rec_list = recorded if isinstance(recorded, list) else []
        return [
            _hide(v, rec_list[i] if i < len(rec_list) else _ABSENT, secrets)
            for i, v in enumerate(live)
        ]
    return live


def detect_drift(
    store: StateStore,
    providers: Mapping[str, Mapping[str, ProviderConfig]],
    *,
    repo_root: Path,
    env: Mapping[str, str],
    environments: Sequence[str] = (),
    parallelism: int = 1,
    register: Register = to_backstop,
) -> DriftReport:
    """Read every recorded instance from its provider and compare field by field;
    `parallelism` reads at once per environment (each read is a round trip).
    `register` (the session's redactor; the default only for library use) learns the
    fingerprint key and the secret values the providers and the comparison find."""
    report = DriftReport()
    key = store.fingerprint_key(create=False) or b""  # none stored: nothing to match
    register([key.decode(errors="replace")])
    for envname in environments or store.environments():
        clients = ProviderPool.from_entry_points(
            providers.get(envname, {}), repo_root=repo_root, env=env, register=register
        )
        items: list[DriftItem] = []
        report.serials[envname] = store.serial(envname)
        try:
            compare = partial(_compare, clients, key, env, register)
            records = sorted(store.applied(envname).items())
            if parallelism > 1 and len(records) > 1:
                with ThreadPoolExecutor(min(parallelism, len(records))) as pool:
                    items = list(pool.map(compare, records))  # in the records' order
            else:
                items = [compare(r) for r in records]
        finally:
            clients.close()
        report.environments[envname] = items
    return report


def _compare(
    clients: ProviderPool,
    key: bytes,
    env: Mapping[str, str],
    register: Register,
    item: tuple[InstanceKey, AppliedRecord],
) -> DriftItem:
    """One recorded instance read from its provider and compared with its record."""
    k, rec = item
    try:
        provider = clients.get(rec.provider)
        live = provider.read(k.kind, k.name, k.environment, rec.provider_id)
        # A vendor holding part of the body maps it back onto the record.
        body = None if live is None else provider.live_body(live, rec.spec)
    except ReconcilerError as e:
        return DriftItem(k, rec.provider, "unreadable", error=e.message)
    if body is None:
        return DriftItem(k, rec.provider, "missing")
    diff = field_diff(rec.spec, _normalise_live(body, rec, key, env, register))
    return DriftItem(k, rec.provider, "drifted" if diff else "in-sync", diff)


def heal_context(store: StateStore, environment: str, applied_by: str | None = None) -> RunContext:
    """A heal puts recorded specs back: it records the commit and policy those specs
    were applied from, never the checkout's HEAD (which may hold changes nobody
    approved), and the gate skips heal runs when it looks for the recorded state."""
    details = {"applied_by": applied_by} if applied_by else {}
    last = store.last_applied_run(environment)
    if last is None:
        return RunContext(commit=None, trigger="heal", details=details)
    return RunContext(commit=last.commit, trigger="heal", policy=last.policy, details=details)


def heal(
    store: StateStore,
    report: DriftReport,
    providers: Mapping[str, Mapping[str, ProviderConfig]],
    *,
    repo_root: Path,
    env: Mapping[str, str],
    parallelism: int = 8,
    break_lock: bool = False,
    progress: ProgressFn | None = None,
    applied_by: str | None = None,
    register: Register = to_backstop,
) -> list[EnvironmentResult]:
    """Re-apply the recorded spec of every drifted or missing instance. Each run records
    its environment's last applied run's commit and policy (`heal_context`), never what
    is checked out."""
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
                RunRequest(
                    desired=desired,
                    providers=providers.get(envname, {}),
                    context=heal_context(store, envname, applied_by),
                    provider_factory=entry_point_factory(
                        repo_root=repo_root, env=env, register=register
                    ),
                    parallelism=parallelism,
                    break_lock=break_lock,
                    progress=progress,
                ),
            )
        )
    return results
