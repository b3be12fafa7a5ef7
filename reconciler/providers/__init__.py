"""Provider plugins, found through the `reconciler.providers` entry-point group."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from reconciler.errors import ConfigError
from reconciler.instances import Instance, ProviderConfig
from reconciler.manifests import Desired, Diagnostic
from reconciler.manifests.diagnostics import locate
from reconciler.providers.base import (
    DeleteRule,
    HealthStatus,
    LiveObject,
    Problem,
    Provider,
    resolve_secrets,
)

__all__ = [
    "DeleteRule",
    "HealthStatus",
    "LiveObject",
    "Problem",
    "Provider",
    "make_provider",
    "plan_time_problems",
    "provider_class",
    "resolve_secrets",
]

GROUP = "reconciler.providers"


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


@functools.cache
def provider_class(type_name: str) -> type[Provider]:
    """The class registered for a provider `type` (loaded once per process)."""
    eps = _entry_points()
    ep = eps.get(type_name)
    if ep is None:
        known = ", ".join(sorted(eps)) or "none"
        raise ConfigError(f"unknown provider type {type_name!r}; known types: {known}")
    try:
        cls = ep.load()
    except Exception as e:  # a broken plugin must read as a config problem, not a traceback
        raise ConfigError(
            f"provider type {type_name!r}: cannot load {ep.value}: {type(e).__name__}: {e}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ConfigError(
            f"provider type {type_name!r}: {ep.value} is not a reconciler Provider class"
        )
    return cls


def make_provider(config: ProviderConfig, *, repo_root: Path, env: Mapping[str, str]) -> Provider:
    """A client for one configured provider; the caller closes it."""
    return provider_class(config.type)(config, repo_root=repo_root, env=env)


def plan_time_problems(
    desired: Desired, *, repo_root: Path, env: Mapping[str, str]
) -> list[Diagnostic]:
    """What each provider finds wrong with its instances before anything is sent
    (`Provider.validate`: no network), located at the field a `Problem` names (plain
    strings at the instance's document); and two instances that one provider would map
    to the same vendor object (`Provider.identity`), in any environments."""
    problems: list[Diagnostic] = []
    claimed: dict[tuple[str, str], Instance] = {}
    for envname, configs in desired.providers.items():
        made = {
            name: make_provider(pc, repo_root=repo_root, env=env) for name, pc in configs.items()
        }
        try:
            for inst in desired.instances.get(envname, {}).values():
                provider = made.get(inst.provider)
                if provider is None or inst.source is None:
                    continue
                problems.extend(
                    _located(desired, inst, p, f"{envname}: ") for p in provider.validate(inst)
                )
                ident = provider.identity(inst)
                if ident is None:
                    continue
                other = claimed.setdefault((provider.config.type, ident), inst)
                if other is not inst:
                    problems.append(
                        _located(
                            desired,
                            inst,
                            f"{inst.key.address} would be the same {provider.config.type} "
                            f"object ({ident}) as {other.key.address} in {other.environment}; "
                            "give one of them its own name (see docs/providers.md)",
                            f"{envname}: ",
                        )
                    )
        finally:
            for provider in made.values():
                provider.close()
    return problems


def _located(desired: Desired, inst: Instance, problem: str | Problem, prefix: str) -> Diagnostic:
    """A problem as `file:line:col`: at the field it names, in the environment's
    override when the value was written there, else at the instance's document."""
    assert inst.source is not None
    if isinstance(problem, str):
        return Diagnostic(inst.source.path, inst.source.line, 1, prefix + problem)
    kind = "Provider" if problem.on == "provider" else inst.kind
    name = inst.provider if problem.on == "provider" else inst.name
    entry = desired.manifests.by_kind(kind).get(name)
    if entry is None:
        return Diagnostic(inst.source.path, inst.source.line, 1, prefix + problem.message)
    base: list[str | int] = ["spec", *problem.field]
    override: list[str | int] = ["spec", "overrides", inst.environment, *problem.field]
    in_override = _depth(entry.raw, override) - 3
    where = override if in_override > 0 and in_override >= _depth(entry.raw, base) - 1 else base
    pos = locate(entry.raw, where)
    return Diagnostic(entry.path, pos.line, pos.col, prefix + problem.message)


def _depth(data: object, loc: list[str | int]) -> int:
    """How many leading parts of `loc` exist in `data`."""
    node = data
    for i, part in enumerate(loc):
        in_map = isinstance(node, dict) and part in node
        in_seq = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_map or in_seq):
            return i
        node = node[part]  # type: ignore[index]
    return len(loc)
