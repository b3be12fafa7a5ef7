"""Plan: desired instances × recorded state → ordered changes per environment.

Pure: reads the state store, never writes it, never talks to providers (unless the
caller asks for `--refresh`, which happens outside this module). The saved form
(`Plan.to_dict`) is versioned and documented in docs/plan-format.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from reconciler.config import ApprovalsConfig
from reconciler.instances import Instance, InstanceKey, canonical_json
from reconciler.manifests import Desired
from reconciler.policy import policy_at
from reconciler.providers.base import DeleteRule
from reconciler.schedules import spec_next_runs
from reconciler.state.base import AppliedRecord, StateStore, fingerprint
from reconciler.vocabulary import Action, Risk, as_risk, highest_risk

FORMAT_VERSION = 1
SENSITIVE = "(sensitive)"
#: Order of kinds when creating/updating; deletes run in the reverse order.
KIND_ORDER = ("Deployment", "Schedule")
#: (kind, name, recorded body) → what a provider says about deleting that object.
DeleteRuleFn = Callable[[str, str, Mapping[str, Any]], DeleteRule]


@dataclass(frozen=True)
class FieldDiff:
    """One changed field: dotted path, before and after (secrets already masked)."""

    path: str
    before: Any
    after: Any


@dataclass
class Change:
    action: Action
    key: InstanceKey
    provider: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    diff: list[FieldDiff] = field(default_factory=list)
    reason: str | None = None
    risk: Risk = "low"
    depends_on: list[InstanceKey] = field(default_factory=list)
    #: Set when this change may not be applied (e.g. a delete in a protected environment).
    refused: str | None = None
    #: Fingerprints of secret values this change applies (never the values).
    secret_fingerprints: dict[str, str] = field(default_factory=dict)
    #: A created or changed schedule's next fire times (UTC, ISO 8601).
    next_runs: list[str] = field(default_factory=list)

    @property
    def environment(self) -> str:
        return self.key.environment

    @property
    def kind(self) -> str:
        return self.key.kind

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def address(self) -> str:
        return self.key.address


@dataclass
class EnvironmentPlan:
    environment: str
    serial: int
    protected: bool
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    #: What the manifests change in the environment's policy against the policy of
    #: record: provider settings, the variables read, approvals, windows. Nothing is
    #: applied for them; the gate judges the next change as a policy change.
    policy_changes: list[FieldDiff] = field(default_factory=list)
    #: What the gate will ask of this change (`plan` fills it in: gate.judge.Needs).
    gate: dict[str, Any] | None = None

    def counts(self) -> dict[str, int]:
        c = {"create": 0, "update": 0, "replace": 0, "delete": 0}
        for ch in self.changes:
            c[ch.action] += 1
        return c

    @property
    def max_risk(self) -> Risk:
        return highest_risk(ch.risk for ch in self.changes)


@dataclass
class Plan:
    commit: str | None
    dirty: bool
    ref: str | None
    created_at: datetime
    environments: list[EnvironmentPlan]
    format_version: int = FORMAT_VERSION

    @property
    def has_changes(self) -> bool:
        return any(e.changes for e in self.environments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "commit": self.commit,
            "dirty": self.dirty,
            "ref": self.ref,
            "created_at": self.created_at.isoformat(),
            "has_changes": self.has_changes,
            "environments": [
                {
                    "name": e.environment,
                    "serial": e.serial,
                    "protected": e.protected,
                    "summary": {**e.counts(), "unchanged": e.unchanged},
                    "changes": [_change_dict(c) for c in e.changes],
                    "gate": e.gate,
                    "policy_changes": [
                        {"path": d.path, "before": d.before, "after": d.after}
                        for d in e.policy_changes
                    ],
                }
                for e in self.environments
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"plan format_version {data.get('format_version')!r} is not supported "
                f"(this reconciler reads {FORMAT_VERSION})"
            )
        envs = []
        for e in data["environments"]:
            changes = [
                Change(
                    action=c["action"],
                    key=InstanceKey(e["name"], c["kind"], c["name"]),
                    provider=c["provider"],
                    before=c["before"],
                    after=c["after"],
                    diff=[FieldDiff(d["path"], d["before"], d["after"]) for d in c["diff"]],
                    reason=c.get("reason"),
                    risk=as_risk(c.get("risk", "low")),
                    depends_on=[InstanceKey(e["name"], k, n) for k, n in c.get("depends_on", [])],
                    refused=c.get("refused"),
                    secret_fingerprints=dict(c.get("secret_fingerprints", {})),
                    next_runs=list(c.get("next_runs", [])),
                )
                for c in e["changes"]
            ]
            envs.append(
                EnvironmentPlan(
                    environment=e["name"],
                    serial=int(e["serial"]),
                    protected=bool(e["protected"]),
                    changes=changes,
                    unchanged=int(e["summary"]["unchanged"]),
                )
            )
        return cls(
            commit=data.get("commit"),
            dirty=bool(data.get("dirty")),
            ref=data.get("ref"),
            created_at=datetime.fromisoformat(data["created_at"]),
            environments=envs,
        )


def _change_dict(c: Change) -> dict[str, Any]:
    return {
        "action": c.action,
        "kind": c.kind,
        "name": c.name,
        "provider": c.provider,
        "risk": c.risk,
        "reason": c.reason,
        "refused": c.refused,
        "depends_on": [[k, n] for _, k, n in c.depends_on],
        "before": c.before,
        "after": c.after,
        "diff": [{"path": d.path, "before": d.before, "after": d.after} for d in c.diff],
        "secret_fingerprints": c.secret_fingerprints,
        "next_runs": c.next_runs,
    }


def _path_str(parts: Sequence[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _mask(value: Any) -> Any:
    """Secret references are shown as `(sensitive)`; values are never present anyway.
    Parts without a reference are returned as they are, not copied (nested values are
    shared, never edited; a first plan masks every body, hence the inlined checks)."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("secretEnv"), str):  # secret_ref
            return SENSITIVE
        out: dict[str, Any] | None = None
        for k, v in value.items():
            if isinstance(v, _CONTAINERS) and (masked := _mask(v)) is not v:
                if out is None:
                    out = dict(value)
                out[k] = masked
        return value if out is None else out
    if isinstance(value, list):
        items: list[Any] | None = None
        for i, v in enumerate(value):
            if isinstance(v, _CONTAINERS) and (masked := _mask(v)) is not v:
                if items is None:
                    items = list(value)
                items[i] = masked
        return value if items is None else items
    return value


_CONTAINERS = (dict, list)


def _masked_body(inst: Instance) -> dict[str, Any]:
    """`_mask(inst.body())` without walking the body again: the instance knows where
    its secret references are, so only the containers on the way to one are copied."""
    body = inst.body()  # a new mapping; what is under it is shared, never edited
    for path, _ in inst.secret_locations:
        if not path:
            continue  # the spec itself is never shown bare: it sits inside the body
        node: Any = body
        for part in path[:-1]:
            child = node[part]
            child = dict(child) if isinstance(child, dict) else list(child)
            node[part] = child
            node = child
        node[path[-1]] = SENSITIVE
    return body


def field_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[FieldDiff]:
    """Field-level differences (deepdiff), as dotted paths, sorted, secrets masked."""
    from deepdiff import DeepDiff  # only updates need it; a first plan need not load it

    dd = DeepDiff(dict(before), dict(after), ignore_order=False, view="tree", verbose_level=2)
    out: dict[str, FieldDiff] = {}
    for levels in dd.values():
        for level in levels:
            parts = level.path(output_format="list")
            # Report list changes on the list itself: easier to read than per index.
            while parts and isinstance(parts[-1], int):
                parts = parts[:-1]
            bval = _get(before, parts)
            aval = _get(after, parts)
            p = _path_str(parts)
            out[p] = FieldDiff(p, _mask(bval), _mask(aval))
    return [out[k] for k in sorted(out)]


_MISSING: Any = None


def _get(data: Any, parts: Sequence[Any]) -> Any:
    node = data
    for p in parts:
        in_map = isinstance(node, dict) and p in node
        in_seq = isinstance(node, list) and isinstance(p, int) and p < len(node)
        if in_map or in_seq:
            node = node[p]
        else:
            return _MISSING
    return node


def _replace_reason(
    diff: Iterable[FieldDiff], fields: Mapping[str, str], provider: str
) -> str | None:
    """Why the provider must replace rather than update, one clause per field that
    forces it (with the vendor's reason when it gives one); None when none does."""
    paths = [d.path for d in diff]
    clauses = []
    for f, why in fields.items():
        if any(p == f or p.startswith(f + ".") or f.startswith(p + ".") for p in paths):
            clause = f"{f} cannot be changed in place on {provider}"
            clauses.append(f"{clause}: {why}" if why else clause)
    return "; ".join(clauses) or None


def _secret_fingerprints(
    names: Iterable[str], env: Mapping[str, str], key: bytes
) -> dict[str, str | None]:
    """NAME → keyed fingerprint of its current value (None when not set here)."""
    return {name: _fingerprint(key, env.get(name)) for name in names}


@lru_cache(maxsize=256)
def _fingerprint(key: bytes, value: str | None) -> str | None:
    return fingerprint(key, value) if value is not None else None


def _rotated(recorded: Mapping[str, str | None], current: Mapping[str, str | None]) -> list[str]:
    """Secrets whose value differs from the one applied (unknown on either side: no)."""
    return sorted(
        n for n, fp in current.items() if fp is not None and recorded.get(n) not in (None, fp)
    )


def _qualify_replace(ch: Change, rule: DeleteRule, old_provider: str) -> None:
    """A replace deletes the old object first: the old provider's delete rule holds."""
    if rule.note:
        ch.reason = f"{ch.reason}; {rule.note}" if ch.reason else rule.note
    if rule.refused:
        ch.refused = f"replacing deletes the old object on {old_provider}, which is refused: " + (
            rule.refused
        )


def plan_environment(
    env: str,
    desired: Mapping[InstanceKey, Instance],
    recorded: Mapping[InstanceKey, AppliedRecord],
    *,
    serial: int,
    protected: bool,
    allow_delete: bool,
    immutable: Mapping[str, Mapping[str, str]],
    secret_env: Mapping[str, str],
    fingerprint_key: bytes,
    delete_rules: Mapping[str, DeleteRuleFn] | None = None,
) -> EnvironmentPlan:
    """One environment's changes, in dependency order. `immutable` (field → reason)
    and `delete_rules` are by provider name."""
    rules = delete_rules or {}
    ep = EnvironmentPlan(environment=env, serial=serial, protected=protected)
    upserts: list[Change] = []
    for key, inst in desired.items():
        fps = _secret_fingerprints(inst.secret_names, secret_env, fingerprint_key)
        known_fps = {k: v for k, v in fps.items() if v is not None}
        rec = recorded.get(key)
        if rec is None:
            upserts.append(
                Change(
                    "create",
                    key,
                    inst.provider,
                    None,
                    _masked_body(inst),
                    risk=inst.risk,
                    secret_fingerprints=known_fps,
                )
            )
            continue
        rotated = _rotated(rec.secret_fingerprints, fps)
        if rec.spec_hash == inst.hash() and rec.provider == inst.provider and not rotated:
            ep.unchanged += 1
            continue
        diff = field_diff(rec.spec, inst.body()) if rec.spec_hash != inst.hash() else []
        for n in rotated:
            diff.append(FieldDiff(f"secret {n}", SENSITIVE, f"{SENSITIVE} (rotated)"))
        action: Action = "update"
        reason = None
        if rec.provider != inst.provider:
            action, reason = "replace", f"provider changes from {rec.provider} to {inst.provider}"
        elif why := _replace_reason(diff, immutable.get(inst.provider, {}), inst.provider):
            action, reason = "replace", why
        if not diff and not rotated and action == "update":
            ep.unchanged += 1
            continue
        ch = Change(
            action,
            key,
            inst.provider,
            _mask(rec.spec),
            _masked_body(inst),
            diff=diff,
            reason=reason,
            risk=inst.risk,
            secret_fingerprints=known_fps,
        )
        if action == "replace" and (rule := rules.get(rec.provider)) is not None:
            _qualify_replace(ch, rule(key.kind, key.name, rec.spec), rec.provider)
        upserts.append(ch)
    deletes: list[Change] = []
    for key, rec in recorded.items():
        if key in desired:
            continue
        ch = Change(
            "delete",
            key,
            rec.provider,
            _mask(rec.spec),
            None,
            risk=as_risk(rec.spec.get("risk", "low")),
        )
        vendor = rule(key.kind, key.name, rec.spec) if (rule := rules.get(rec.provider)) else None
        if vendor is not None:
            ch.reason, ch.refused = vendor.note, vendor.refused
        if protected and not allow_delete and ch.refused is None:
            ch.refused = f"{env} is protected: deleting {ch.address} needs --allow-delete"
        deletes.append(ch)
    # Dependencies inside this plan: a schedule after its deployment; a deployment's
    # delete after the deletes of schedules that ran it.
    changing = {c.key for c in upserts}
    for c in upserts:
        inst = desired[c.key]
        c.depends_on = [d for d in inst.depends_on if d in changing]
    deleting = {c.key for c in deletes}
    for c in deletes:
        if c.kind == "Deployment":
            c.depends_on = sorted(
                d.key
                for d in deletes
                if d.kind == "Schedule" and (d.before or {}).get("deployment") == c.name
            )
        else:
            c.depends_on = []
        c.depends_on = [d for d in c.depends_on if d in deleting]
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    upserts.sort(key=lambda c: (rank.get(c.kind, 99), c.name))
    deletes.sort(key=lambda c: (-rank.get(c.kind, 99), c.name))
    ep.changes = upserts + deletes
    return ep


def policy_changes(desired: Desired, store: StateStore, env: str) -> list[FieldDiff]:
    """The policy the manifests declare against the policy of record, field by field
    (without the approval source, which is read from reconciler.yaml). Nothing recorded:
    none (everything is new); a policy recorded before provider settings and variables
    were part of it shows them as added."""
    last = store.last_applied_run(env)
    if last is None or last.policy is None:
        return []
    before = {k: v for k, v in last.policy.items() if k != "approvals"}
    after = policy_at(desired, ApprovalsConfig(), env, "").document
    after.pop("approvals")
    if canonical_json(before) == canonical_json(after):
        return []  # the usual case: no field diff (nor deepdiff's import) needed
    return field_diff(before, after)


def _protected(desired: Desired, store: StateStore, env: str) -> bool:
    """Protected when the manifests say so *or* the policy of record did: a change
    cannot drop `protected` to delete freely in the same breath."""
    if desired.policy(env).protected:
        return True
    last = store.last_applied_run(env)
    recorded = (last.policy or {}).get("environment") if last is not None else None
    return isinstance(recorded, dict) and recorded.get("protected") is True


def make_plan(
    desired: Desired,
    store: StateStore,
    *,
    commit: str | None,
    dirty: bool = False,
    ref: str | None = None,
    environments: Sequence[str] | None = None,
    allow_delete: bool = False,
    secret_env: Mapping[str, str] | None = None,
    now: datetime | None = None,
    persist_key: bool = False,
) -> Plan:
    """The plan for the chosen environments (default: every declared one)."""
    from reconciler.providers import provider_class

    names = list(environments) if environments else list(desired.environments)
    unknown = [n for n in names if n not in desired.environments]
    if unknown:
        from reconciler.errors import ReconcilerError
        from reconciler.manifests.diagnostics import did_you_mean

        raise ReconcilerError(
            f"unknown environment {unknown[0]!r}"
            f"{did_you_mean(unknown[0], desired.environments)}; "
            f"declared: {', '.join(desired.environments)}"
        )
    # A plan never writes state: with no key stored yet nothing recorded has a
    # fingerprint to compare with, so this plan fingerprints nothing (apply, which
    # re-plans under its lock with persist_key, makes the key).
    key = store.fingerprint_key(create=persist_key)
    if key is None:
        env_vars: dict[str, str] = {}
        key = b""
    else:
        env_vars = dict(secret_env or {})
    plans = []
    for env in names:
        providers = desired.providers.get(env, {})
        wanted = desired.instances.get(env, {})
        # Read whole recorded specs only where the hash says something changed.
        index = store.applied_index(env)
        same = {
            k
            for k, inst in wanted.items()
            if (a := index.get(k)) is not None
            and a.provider == inst.provider
            and a.spec_hash == inst.hash()
            # The spec is the one recorded, so are its secret names: no walk of it.
            and not _rotated(
                a.secret_fingerprints, _secret_fingerprints(a.secret_fingerprints, env_vars, key)
            )
        }
        recorded = store.applied(env, keys=[k for k in index if k not in same])
        immutable: dict[str, dict[str, str]] = {}
        rules: dict[str, DeleteRuleFn] = {}
        for pname in {*providers, *(r.provider for r in recorded.values())}:
            pc = providers.get(pname)
            if pc is not None:
                cls = provider_class(pc.type)
                immutable[pname] = cls.replace_reasons()
                rules[pname] = functools.partial(cls.delete_rule, pc)
        plans.append(
            plan_environment(
                env,
                {k: v for k, v in wanted.items() if k not in same},
                recorded,
                serial=store.serial(env),
                protected=_protected(desired, store, env),
                allow_delete=allow_delete,
                immutable=immutable,
                secret_env=env_vars,
                fingerprint_key=key,
                delete_rules=rules,
            )
        )
        plans[-1].unchanged += len(same)
        plans[-1].policy_changes = policy_changes(desired, store, env)
    created = now or datetime.now(UTC)
    for ep in plans:
        for ch in ep.changes:
            if ch.kind == "Schedule" and ch.after is not None:
                ch.next_runs = [t.isoformat() for t in spec_next_runs(ch.after, created, 3)]
    return Plan(commit=commit, dirty=dirty, ref=ref, created_at=created, environments=plans)
