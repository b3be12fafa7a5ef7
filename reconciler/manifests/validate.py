"""Validation: parsed documents → typed manifests, every problem located.

Per document: YAML (already parsed), then the pydantic model of its kind. Across
documents: unique names per kind, references (environments, providers, prompt@version,
schedule → deployment), provider types, cron/interval/timezone, secrets written in
plain text. Per-environment checks that need overrides merged live in expand.py.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from reconciler import schedules
from reconciler.manifests import models as m
from reconciler.manifests.diagnostics import (
    SECRET_NAME,
    SECRET_VALUE,
    Diagnostic,
    did_you_mean,
    from_validation_error,
    has_userinfo,
    locate,
    looks_secret,
)
from reconciler.manifests.yamlload import Pos, YamlProblem, YMap, load_documents

M = TypeVar("M", bound=BaseModel)

#: Provider types built in; plugins add theirs through the `reconciler.providers` group.
BUILTIN_PROVIDER_TYPES = (
    "local",
    "http",
    "langfuse",
    "azure-openai",
    "huggingface",
    "replicate",
    "together",
    "predibase",
    "modal",
)

_CONFIG_SECRET_KEYS = re.compile(r"^(api[-_]?key|token|secret|password|auth|authorization)$", re.I)


@dataclass
class Entry(Generic[M]):
    """A validated document with its raw data (for positions) and file."""

    model: M
    raw: YMap
    path: str

    @property
    def name(self) -> str:
        return str(self.model.metadata.name)  # type: ignore[attr-defined]

    def pos(self, *loc: str | int) -> Pos:
        return locate(self.raw, loc)


@dataclass
class Manifests:
    """All valid documents of a repo, by kind and name."""

    environments: dict[str, Entry[m.Environment]] = field(default_factory=dict)
    providers: dict[str, Entry[m.Provider]] = field(default_factory=dict)
    prompts: dict[str, Entry[m.Prompt]] = field(default_factory=dict)
    deployments: dict[str, Entry[m.Deployment]] = field(default_factory=dict)
    schedules: dict[str, Entry[m.Schedule]] = field(default_factory=dict)
    checks: dict[str, Entry[m.Check]] = field(default_factory=dict)
    evals: dict[str, Entry[m.Eval]] = field(default_factory=dict)
    documents: int = 0

    def by_kind(self, kind: str) -> dict[str, Entry[Any]]:
        return {
            "Environment": self.environments,
            "Provider": self.providers,
            "Prompt": self.prompts,
            "Deployment": self.deployments,
            "Schedule": self.schedules,
            "Check": self.checks,
            "Eval": self.evals,
        }[kind]  # type: ignore[return-value]


@functools.cache
def provider_types() -> tuple[str, ...]:
    """Installed provider types (reading entry points is slow: only when needed)."""
    names = set(BUILTIN_PROVIDER_TYPES)
    names.update(ep.name for ep in entry_points(group="reconciler.providers"))
    return tuple(sorted(names))


class _Collector:
    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def at(self, path: str, pos: Pos, message: str) -> None:
        self.items.append(Diagnostic(path, pos.line, pos.col, message))


def parse_files(files: Mapping[str, bytes], out: list[Diagnostic]) -> list[tuple[str, YMap]]:
    """Every non-empty document of every file, in path order; problems go to `out`."""
    docs: list[tuple[str, YMap]] = []
    for path in sorted(files):
        try:
            for doc in load_documents(files[path]):
                if doc.data is None:
                    continue
                if not isinstance(doc.data, YMap):
                    out.append(
                        Diagnostic(path, doc.pos.line, doc.pos.col, "a manifest must be a mapping")
                    )
                    continue
                docs.append((path, doc.data))
        except YamlProblem as p:
            out.append(Diagnostic(path, p.line, p.col, p.message))
    return docs


#: id(raw document) → (document, its model or its problems); see validate_documents.
ModelMemo = dict[int, tuple[YMap, "m.Manifest | list[Diagnostic]"]]


def validate_documents(
    docs: Iterable[tuple[str, YMap]], out: list[Diagnostic], memo: ModelMemo | None = None
) -> Manifests:
    """Schema-validate each document and check everything that spans documents.

    `memo` lets a long-lived caller (watch) skip re-validating documents it parsed
    before: a document object that is still the same object gives the same model.
    """
    c = _Collector()
    result = Manifests()
    for path, raw in docs:
        result.documents += 1
        if raw.get("apiVersion") != m.API_VERSION and isinstance(raw.get("apiVersion"), str):
            c.at(
                path,
                locate(raw, ["apiVersion"]),
                f"unsupported apiVersion {raw['apiVersion']!r} (expected {m.API_VERSION!r})",
            )
            continue
        cached = memo.get(id(raw)) if memo is not None else None
        if cached is not None and cached[0] is raw:
            outcome = cached[1]
        else:
            try:
                outcome = m.manifest_adapter.validate_python(raw)
            except ValidationError as e:
                outcome = from_validation_error(e, raw, path)
            if memo is not None:
                memo[id(raw)] = (raw, outcome)
        if isinstance(outcome, list):
            c.items.extend(outcome)
            continue
        model = outcome
        table = result.by_kind(model.kind)
        name = str(model.metadata.name)
        if name in table:
            first = table[name]
            c.at(
                path,
                locate(raw, ["metadata", "name"]),
                f"duplicate {model.kind} name {name!r} (first defined at "
                f"{first.path}:{first.pos('metadata', 'name').line})",
            )
            continue
        table[name] = Entry(model, raw, path)
    _check_references(result, c)
    out.extend(c.items)
    return result


def _check_envs(
    c: _Collector, e: Entry[Any], envs: Mapping[str, Any], field_loc: tuple[str, ...] = ()
) -> None:
    spec = e.model.spec
    for i, env in enumerate(spec.environments):
        if env not in envs:
            c.at(
                e.path,
                e.pos("spec", "environments", i),
                f"unknown environment {env!r}{did_you_mean(env, envs)}",
            )
    for env in spec.overrides:
        if env not in spec.environments:
            c.at(
                e.path,
                locate(e.raw, ["spec", "overrides", env], key=True),
                f"override for {env!r}, which is not in this {e.model.kind}'s environments",
            )


def _check_references(r: Manifests, c: _Collector) -> None:
    for p in r.providers.values():
        _check_envs(c, p, r.environments)
        ptype = p.model.spec.type
        if ptype not in BUILTIN_PROVIDER_TYPES and ptype not in (types := provider_types()):
            c.at(
                p.path,
                p.pos("spec", "type"),
                f"unknown provider type {p.model.spec.type!r}"
                f"{did_you_mean(p.model.spec.type, types)}; installed: {', '.join(types)}",
            )
        _check_plaintext_config(c, p.path, p.raw, p.model.spec.config, ("spec", "config"))
        _check_credentials(c, p.path, p.raw, p.model.spec.credentials, ("spec", "credentials"))
        for env, pov in p.model.spec.overrides.items():
            where = ("spec", "overrides", env)
            if pov.config:
                _check_plaintext_config(c, p.path, p.raw, pov.config, (*where, "config"))
            if pov.credentials:
                _check_credentials(c, p.path, p.raw, pov.credentials, (*where, "credentials"))
    for pr in r.prompts.values():
        seen: dict[str, int] = {}
        for i, v in enumerate(pr.model.spec.versions):
            if v.version in seen:
                c.at(
                    pr.path,
                    pr.pos("spec", "versions", i, "version"),
                    f"duplicate prompt version {v.version!r}",
                )
            seen[v.version] = i
    for d in r.deployments.values():
        _check_envs(c, d, r.environments)
        dspec = d.model.spec
        _check_deployment_refs(c, r, d, dspec, ("spec",))
        for env, dov in dspec.overrides.items():
            _check_deployment_refs(c, r, d, dov, ("spec", "overrides", env))
    for s in r.schedules.values():
        _check_envs(c, s, r.environments)
        sspec = s.model.spec
        if sspec.deployment not in r.deployments:
            c.at(
                s.path,
                s.pos("spec", "deployment"),
                f"unknown deployment {sspec.deployment!r}"
                f"{did_you_mean(sspec.deployment, r.deployments)}",
            )
        else:
            dep_envs = r.deployments[sspec.deployment].model.spec.environments
            for i, env in enumerate(sspec.environments):
                if env in r.environments and env not in dep_envs:
                    c.at(
                        s.path,
                        s.pos("spec", "environments", i),
                        f"deployment {sspec.deployment!r} is not deployed to {env!r}",
                    )
        _check_timing(c, s, sspec, ("spec",), base=None)
        _check_urls(c, s.path, s.raw, sspec.input, ("spec", "input"))
        for env, sov in sspec.overrides.items():
            _check_timing(c, s, sov, ("spec", "overrides", env), base=sspec)
            _check_urls(c, s.path, s.raw, sov.input, ("spec", "overrides", env, "input"))
    for ck in r.checks.values():
        _check_check(c, r, ck)
    for ev in r.evals.values():
        _check_targets(c, r, ev)
        grader = ev.model.spec.judge
        if grader is not None and grader.pass_.regex is not None:
            try:
                re.compile(grader.pass_.regex)
            except re.error as bad:
                c.at(
                    ev.path,
                    ev.pos("spec", "judge", "pass", "regex"),
                    f"regex is not a valid regular expression: {bad}",
                )
        if grader is not None:
            dep = r.deployments.get(grader.deployment)
            missing = [
                env for env in ev.model.spec.environments
                if dep is None or env not in dep.model.spec.environments
            ]  # fmt: skip
            if missing:
                c.at(
                    ev.path,
                    ev.pos("spec", "judge", "deployment"),
                    f"judge deployment {grader.deployment!r} is not deployed to "
                    f"{', '.join(map(repr, missing))}",
                )
        base = ev.model.spec.baseline
        if base is not None and base.environment not in r.environments:
            c.at(
                ev.path,
                ev.pos("spec", "baseline", "environment"),
                f"baseline.environment names an unknown environment {base.environment!r}"
                f"{did_you_mean(base.environment, r.environments)}",
            )
    for e in r.environments.values():
        promo = e.model.spec.promotion
        if promo is not None and (promo.source not in r.environments or promo.source == e.name):
            why = "itself" if promo.source == e.name else "an unknown environment"
            c.at(
                e.path,
                e.pos("spec", "promotion", "from"),
                f"promotion.from names {why} {promo.source!r}"
                f"{did_you_mean(promo.source, r.environments) if why != 'itself' else ''}",
            )
        for i, name in enumerate(promo.requires.evals if promo is not None else ()):
            required = r.evals.get(name)
            at = e.pos("spec", "promotion", "requires", "evals", i)
            if required is None:
                c.at(e.path, at, f"promotion.requires.evals names an unknown Eval {name!r}"
                     f"{did_you_mean(name, r.evals)}")  # fmt: skip
            elif promo is not None and promo.source not in required.model.spec.environments:
                c.at(e.path, at, f"eval {name!r} does not run in {promo.source!r} (the "
                     "promotion's `from`), so it can never be evidence there")  # fmt: skip
        for i, w in enumerate(e.model.spec.windows):
            loc = ("spec", "windows", i)
            start = w.allow if w.allow is not None else w.deny
            which = "allow" if w.allow is not None else "deny"
            if start is not None and (msg := schedules.validate_cron(start)):
                c.at(e.path, e.pos(*loc, which), f"{which}: {msg}")
            try:
                schedules.parse_duration(w.duration)
            except ValueError as ex:
                c.at(e.path, e.pos(*loc, "duration"), f"duration: {ex}")
            if msg := schedules.validate_timezone(w.timezone):
                c.at(e.path, e.pos(*loc, "timezone"), f"timezone: {msg}")


def _check_check(c: _Collector, r: Manifests, ck: Entry[m.Check]) -> None:
    """A check names a deployment deployed to each of its environments, and its regular
    expressions compile."""
    _check_targets(c, r, ck)
    spec = ck.model.spec
    for i, req in enumerate(spec.requests):
        if req.expect.regex is not None:
            try:
                re.compile(req.expect.regex)
            except re.error as e:
                c.at(
                    ck.path,
                    ck.pos("spec", "requests", i, "expect", "regex"),
                    f"regex is not a valid regular expression: {e}",
                )
        _check_urls(c, ck.path, ck.raw, req.input, ("spec", "requests", i, "input"))
        if req.expect.judge is not None:
            c.at(
                ck.path,
                ck.pos("spec", "requests", i, "expect", "judge"),
                "a check cannot ask a judge (an Eval can, with its `judge` deployment)",
            )


def _check_targets(c: _Collector, r: Manifests, ck: Entry[Any]) -> None:
    """A check's or eval's deployment exists in each of its environments."""
    spec = ck.model.spec
    for i, env in enumerate(spec.environments):
        if env not in r.environments:
            c.at(
                ck.path,
                ck.pos("spec", "environments", i),
                f"unknown environment {env!r}{did_you_mean(env, r.environments)}",
            )
    dep = r.deployments.get(spec.deployment)
    if dep is None:
        c.at(
            ck.path,
            ck.pos("spec", "deployment"),
            f"unknown deployment {spec.deployment!r}{did_you_mean(spec.deployment, r.deployments)}",
        )
    else:
        for i, env in enumerate(spec.environments):
            if env in r.environments and env not in dep.model.spec.environments:
                c.at(
                    ck.path,
                    ck.pos("spec", "environments", i),
                    f"deployment {spec.deployment!r} is not deployed to {env!r}",
                )


def _check_deployment_refs(
    c: _Collector, r: Manifests, d: Entry[m.Deployment], spec: Any, loc: tuple[str, ...]
) -> None:
    if spec.provider is not None and spec.provider not in r.providers:
        c.at(
            d.path,
            d.pos(*loc, "provider"),
            f"unknown provider {spec.provider!r}{did_you_mean(spec.provider, r.providers)}",
        )
    if spec.prompt is not None:
        name, _, version = spec.prompt.partition("@")
        if name not in r.prompts:
            c.at(
                d.path,
                d.pos(*loc, "prompt"),
                f"unknown prompt {name!r}{did_you_mean(name, r.prompts)}",
            )
        else:
            versions = [v.version for v in r.prompts[name].model.spec.versions]
            if version not in versions:
                c.at(
                    d.path,
                    d.pos(*loc, "prompt"),
                    f"prompt {name!r} has no version {version!r}{did_you_mean(version, versions)}"
                    f"; it has {', '.join(versions)}",
                )
    for key, value in (spec.env or {}).items():
        if isinstance(value, str) and (SECRET_NAME.search(key) or looks_secret(value)):
            c.at(
                d.path,
                d.pos(*loc, "env", key),
                f"env {key} looks like a secret written in plain text: "
                f"use {{secretEnv: {key}}} and set it in the environment",
            )


def _check_timing(
    c: _Collector, s: Entry[m.Schedule], spec: Any, loc: tuple[str, ...], base: Any
) -> None:
    cron = spec.cron
    interval = spec.interval
    if base is None:
        if (cron is None) == (interval is None):
            c.at(s.path, s.pos(*loc), "a schedule needs exactly one of `cron` or `interval`")
    elif cron is not None and interval is not None:
        c.at(s.path, s.pos(*loc), "an override may set `cron` or `interval`, not both")
    if cron is not None and (msg := schedules.validate_cron(cron)):
        c.at(s.path, s.pos(*loc, "cron"), f"cron: {msg}")
    if interval is not None:
        try:
            schedules.parse_interval(interval)
        except ValueError as ex:
            c.at(s.path, s.pos(*loc, "interval"), f"interval: {ex}")
    if spec.timezone is not None and (msg := schedules.validate_timezone(spec.timezone)):
        c.at(s.path, s.pos(*loc, "timezone"), f"timezone: {msg}")
    for fld in ("start_at", "end_at"):
        value = getattr(spec, fld)
        if value is not None and (msg := _timestamp_problem(value)):
            c.at(s.path, s.pos(*loc, "startAt" if fld == "start_at" else "endAt"), msg)
    _check_bounds(c, s, spec, loc, base)


def _check_bounds(
    c: _Collector, s: Entry[m.Schedule], spec: Any, loc: tuple[str, ...], base: Any
) -> None:
    """`endAt` after `startAt`, in the spec and in each environment's effective values;
    else the schedule would silently never run."""
    if spec.start_at is None and spec.end_at is None:
        return
    start_text = spec.start_at if spec.start_at is not None else getattr(base, "start_at", None)
    end_text = spec.end_at if spec.end_at is not None else getattr(base, "end_at", None)
    if start_text is None or end_text is None:
        return
    if _timestamp_problem(start_text) or _timestamp_problem(end_text):
        return  # already reported
    if datetime.fromisoformat(end_text) > datetime.fromisoformat(start_text):
        return
    key = "endAt" if spec.end_at is not None else "startAt"
    c.at(
        s.path,
        s.pos(*loc, key),
        f"endAt {end_text} must be after startAt {start_text}; the schedule would never run",
    )


def _timestamp_problem(text: str) -> str | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return f"{text!r} is not an ISO 8601 timestamp (e.g. 2026-01-31T09:00:00+01:00)"
    if parsed.tzinfo is None:
        return f"{text!r} needs a UTC offset (e.g. {text}Z or {text}+01:00)"
    return None


def _check_plaintext_config(
    c: _Collector, path: str, raw: YMap, config: Mapping[str, Any], loc: tuple[str | int, ...]
) -> None:
    """Credentials written into `config` (at any depth), never quoted back."""
    for key, value in config.items():
        where = (*loc, key)
        if isinstance(value, Mapping):
            _check_plaintext_config(c, path, raw, value, where)
        elif isinstance(value, list):
            _check_urls(c, path, raw, value, where)
        elif isinstance(value, str) and has_userinfo(value):
            c.at(path, locate(raw, list(where)), _USERINFO_MESSAGE.format(dotted(where)))
        elif isinstance(value, str) and (
            _CONFIG_SECRET_KEYS.match(key) or SECRET_VALUE.match(value)
        ):
            c.at(
                path,
                locate(raw, list(where)),
                f"{dotted(where)} looks like a credential in plain text: name an environment "
                "variable in `credentials` instead (e.g. credentials: {tokenEnv: MY_TOKEN})",
            )


_USERINFO_MESSAGE = (
    "{} is a URL with credentials in it (`user:password@` or `token@` before the host); "
    "refused: put the credential in "
    "an environment variable and name it in `credentials` (e.g. tokenEnv: MY_TOKEN)"
)
#: What an environment variable's name looks like by convention (UPPER_SNAKE).
_CONVENTIONAL_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def dotted(loc: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in loc if p != "spec")


def _check_urls(
    c: _Collector, path: str, raw: YMap, value: Any, loc: tuple[str | int, ...]
) -> None:
    """URLs with userinfo anywhere in free-form data (schedule input, config lists)."""
    if isinstance(value, str) and has_userinfo(value):
        c.at(path, locate(raw, list(loc)), _USERINFO_MESSAGE.format(dotted(loc)))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_urls(c, path, raw, v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_urls(c, path, raw, v, (*loc, i))


def _check_credentials(
    c: _Collector, path: str, raw: YMap, credentials: Mapping[str, str], loc: tuple[str, ...]
) -> None:
    """`credentials` name environment variables; an entry that reads as the credential
    itself (`token: hunter2`, or a value shaped like a key) is refused, unquoted."""
    for key, value in credentials.items():
        itself = _CONFIG_SECRET_KEYS.match(key) and not _CONVENTIONAL_VAR.match(value)
        if itself or looks_secret(value):
            c.at(
                path,
                locate(raw, [*loc, key]),
                f"credentials.{key} looks like the credential itself (not shown): credentials "
                "name environment variables, e.g. credentials: {tokenEnv: MY_TOKEN}; put the "
                "value in such a variable",
            )


ReadFile = Callable[[str], bytes | None]
