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
from reconciler.redaction import Register, to_backstop

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


def make_provider(
    config: ProviderConfig,
    *,
    repo_root: Path,
    env: Mapping[str, str],
    register: Register = to_backstop,
) -> Provider:
    """A client for one configured provider; the caller closes it. `register` learns
    the secrets it finds at run time: the session's redactor (`Session.provider`);
    the default, for library use without a session, feeds only the log backstop."""
    return provider_class(config.type)(config, repo_root=repo_root, env=env, register=register)


def plan_time_problems(
    desired: Desired,
    *,
    repo_root: Path,
    env: Mapping[str, str],
    register: Register = to_backstop,
) -> list[Diagnostic]:
    """What each provider finds wrong with its instances before anything is sent
    (`Provider.validate`: no network), located at the field a `Problem` names (plain
    strings at the instance's document); and two instances that one provider would map
    to the same vendor object (`Provider.identity`), in any environments."""
    problems: list[Diagnostic] = variable_problems(desired, env)
    claimed: dict[tuple[str, str], Instance] = {}
    for envname, configs in desired.providers.items():
        made = {
            name: make_provider(pc, repo_root=repo_root, env=env, register=register)
            for name, pc in configs.items()
        }
        try:
            for inst in desired.instances.get(envname, {}).values():
                provider = made.get(inst.provider)
                if provider is None or inst.source is None:
                    continue
                problems.extend(
                    _located(desired, inst, p, f"{envname}: ") for p in provider.validate(inst)
                )
                refusal = type(provider).suspend_refusal
                if inst.kind == "Deployment" and inst.spec.get("suspended") is True and refusal:
                    problems.append(
                        _located(
                            desired,
                            inst,
                            Problem(
                                f"provider {provider.name!r} ({provider.config.type}) cannot "
                                f"suspend a deployment: {refusal}",
                                ("suspended",),
                            ),
                            f"{envname}: ",
                        )
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


#: Variables no manifest may read, whatever its environment allows: the forge's and the
#: CI runner's own tokens, and the reconciler's own settings (RECONCILER_*). The operator
#: adds names with RECONCILER_RESERVED_VARIABLES (comma-separated).
RESERVED_VARIABLES = frozenset(
    {
        "GITHUB_TOKEN",
        "GH_TOKEN",
        "GITLAB_TOKEN",
        "GL_TOKEN",
        "CI_JOB_TOKEN",
        "CI_JOB_JWT",
        "CI_JOB_JWT_V1",
        "CI_JOB_JWT_V2",
        "CI_REGISTRY_PASSWORD",
        "CI_DEPLOY_PASSWORD",
        "ACTIONS_RUNTIME_TOKEN",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "PGPASSWORD",
        # cloud identities the runner itself signs in with (azure-identity, AWS, Google)
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_CLIENT_CERTIFICATE_PASSWORD",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_PASSWORD",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "ACTIONS_RUNTIME_URL",
        "ACTIONS_CACHE_URL",
    }
)
RESERVED_VARIABLES_ENV = "RECONCILER_RESERVED_VARIABLES"


def reserved_variable(name: str, env: Mapping[str, str]) -> bool:
    extra = {v.strip() for v in env.get(RESERVED_VARIABLES_ENV, "").split(",") if v.strip()}
    return name.upper().startswith("RECONCILER_") or name in RESERVED_VARIABLES or name in extra


def variable_problems(desired: Desired, env: Mapping[str, str]) -> list[Diagnostic]:
    """Each variable a manifest names that its environment may not read: a reserved
    one (never), or one outside the environment's `secrets` list when it has one. The
    names come from the documents; instances are walked only to place a refusal."""
    from reconciler.policy import variable_names

    problems: list[Diagnostic] = []
    seen: set[tuple[str, int, int, str]] = set()

    def why(envname: str, name: str) -> str | None:
        allowed = desired.policy(envname).secrets
        if reserved_variable(name, env):
            return (
                f"{name} is reserved (the forge's, the CI runner's or the reconciler's own); "
                "no manifest may read it"
            )
        if allowed is not None and name not in allowed:
            return (
                f"environment {envname!r} may not read {name}: add it to the Environment's "
                "spec.secrets (a policy change, reviewed as one)"
            )
        return None

    def refuse(text: str, where: Diagnostic) -> None:
        key = (where.path, where.line, where.col, text)
        if key not in seen:
            seen.add(key)
            problems.append(Diagnostic(where.path, where.line, where.col, text))

    for envname in desired.environments:
        declared = desired.manifests.environments[envname]
        for name in declared.model.spec.secrets or ():
            if reserved_variable(name, env):
                pos = locate(declared.raw, ["spec", "secrets"])
                refuse(
                    f"{name} is reserved: no manifest may read it",
                    Diagnostic(declared.path, pos.line, pos.col, ""),
                )
        bad = {n: text for n in variable_names(desired, envname) if (text := why(envname, n))}
        if not bad:
            continue
        first: dict[str, Instance] = {}
        for inst in desired.instances.get(envname, {}).values():
            first.setdefault(inst.provider, inst)
            if inst.source is None:
                continue
            for path, name in inst.secret_locations:
                if name in bad:
                    refuse(bad[name], _located(desired, inst, Problem("", path), ""))
        for pname, pc in desired.providers.get(envname, {}).items():
            doc = desired.manifests.by_kind("Provider").get(pname)
            for key, name in pc.credentials.items():
                if doc is None or name not in bad:
                    continue
                user = first.get(pname)
                if user is not None and user.source is not None:
                    at = Problem("", ("credentials", key), "provider")
                    where = _located(desired, user, at, "")
                else:
                    pos = locate(doc.raw, ["spec", "credentials", key])
                    where = Diagnostic(doc.path, pos.line, pos.col, "")
                refuse(bad[name], where)
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
