"""Instances: what expansion produces and every later stage consumes.

An instance is one Deployment or Schedule in one environment, fully resolved (overrides
merged, prompt template inlined). Its `spec` is plain JSON data in camelCase; secrets
appear only as references `{"secretEnv": NAME}`, never as values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from reconciler.vocabulary import Risk, as_risk


class InstanceKey(NamedTuple):
    """Which instance: one Deployment or Schedule in one environment."""

    environment: str
    kind: str
    name: str

    @property
    def address(self) -> str:
        """How plans and messages name it: `deployment.support-chat`."""
        return f"{self.kind.lower()}.{self.name}"


APPLIED_KINDS = ("Deployment", "Schedule")

#: A secret reference in a spec: the path to it (keys and list indices) and the name.
SecretAt = tuple[tuple[str | int, ...], str]


def canonical_json(data: Any) -> str:
    """Stable JSON: sorted keys, no whitespace; the basis of every hash."""
    return _CANONICAL.encode(data)


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
)


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


@dataclass(frozen=True)
class Source:
    """Where a document came from, for messages (`path:line`)."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class ProviderConfig:
    """A Provider resolved for one environment (overrides merged)."""

    name: str
    type: str
    environment: str
    config: dict[str, Any] = field(default_factory=dict)
    #: e.g. {"tokenEnv": "REGISTRY_TOKEN"}: names of environment variables only.
    credentials: dict[str, str] = field(default_factory=dict)
    models: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Instance:
    """One applied object (Deployment or Schedule) in one environment."""

    environment: str
    kind: str
    name: str
    provider: str
    #: Resolved spec, JSON-compatible, camelCase, without environments/overrides.
    spec: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    source: Source | None = None
    #: Keys this instance needs applied first (a schedule needs its deployment).
    depends_on: tuple[InstanceKey, ...] = ()

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(self.environment, self.kind, self.name)

    @property
    def risk(self) -> Risk:
        return as_risk(self.spec.get("risk", "low"))

    def body(self) -> dict[str, Any]:
        """What a provider is sent: name, environment, labels and the resolved spec."""
        return {
            "name": self.name,
            "environment": self.environment,
            "labels": self.labels,
            **self.spec,
        }

    def hash(self) -> str:
        return self._hash

    def canonical(self) -> str:
        """The body as canonical JSON: what the hash is of, and what the state and the
        local registry store (encoded once per instance)."""
        return self._canonical

    @cached_property
    def _canonical(self) -> str:
        return canonical_json(self.body())

    @cached_property
    def _hash(self) -> str:
        return hashlib.sha256(self._canonical.encode()).hexdigest()

    @property
    def secret_names(self) -> list[str]:
        """Environment variables this instance needs as secrets."""
        return self._secrets[0]

    @property
    def secret_locations(self) -> list[SecretAt]:
        """Where its secret references are: plan masks by these paths."""
        return self._secrets[1]

    @cached_property
    def _secrets(self) -> tuple[list[str], list[SecretAt]]:
        """Names and paths from one walk (a first plan asks both of every instance)."""
        found = secret_locations(self.spec)
        return sorted({name for _, name in found}), found


def secret_ref(value: Any) -> str | None:
    """The variable name when `value` is a secret reference `{"secretEnv": NAME}`."""
    if isinstance(value, dict) and len(value) == 1:
        name = value.get("secretEnv")
        if isinstance(name, str):
            return name
    return None


def secret_locations(spec: Any) -> list[SecretAt]:
    """Every secret reference under `spec` with its path, in no particular order."""
    if (name := secret_ref(spec)) is not None:
        return [((), name)]
    if not isinstance(spec, (dict, list)):
        return []
    found: list[SecretAt] = []
    _walk(spec, (), found)
    return found


def _walk(node: Any, path: tuple[str | int, ...], found: list[SecretAt]) -> None:
    """Containers only. A module function, not a closure: a closure that calls itself
    is a reference cycle, left for the cyclic GC once per instance."""
    for k, v in node.items() if isinstance(node, dict) else enumerate(node):
        if isinstance(v, dict):
            if len(v) == 1 and isinstance(name := v.get("secretEnv"), str):  # secret_ref
                found.append(((*path, k), name))
            else:
                _walk(v, (*path, k), found)
        elif isinstance(v, list):
            _walk(v, (*path, k), found)


def secret_refs(spec: Any) -> list[str]:
    """Names of the environment variables a spec refers to as secrets."""
    return sorted({name for _, name in secret_locations(spec)})
