"""Provider plugins, found through the `reconciler.providers` entry-point group."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from reconciler.errors import ConfigError
from reconciler.instances import ProviderConfig
from reconciler.manifests import Desired, Diagnostic
from reconciler.providers.base import HealthStatus, LiveObject, Provider, resolve_secrets

__all__ = [
    "HealthStatus",
    "LiveObject",
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
    (`Provider.validate`: no network), located at the instance's document."""
    problems: list[Diagnostic] = []
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
                    Diagnostic(inst.source.path, inst.source.line, 1, f"{envname}: {message}")
                    for message in provider.validate(inst)
                )
        finally:
            for provider in made.values():
                provider.close()
    return problems
