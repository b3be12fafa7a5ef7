"""Expansion: valid manifests → one instance per (environment, kind, name).

Overrides are deep-merged (mappings merge, everything else replaces), prompt
references are resolved to `{name, version, template}`, and the checks that only make
sense per environment run here: provider availability, model catalogue, unique
endpoints, replica bounds.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.instances import Instance, InstanceKey, ProviderConfig, Source, secret_ref
from reconciler.manifests import models as m
from reconciler.manifests.diagnostics import Diagnostic, did_you_mean, locate
from reconciler.manifests.validate import Entry, Manifests
from reconciler.manifests.yamlload import Pos

#: Reads a repo-relative file (at the ref being loaded); None when it does not exist.
ReadFile = Callable[[str], bytes | None]


@dataclass
class Desired:
    """The desired state: what every environment should run."""

    manifests: Manifests
    #: Environment names in declaration order.
    environments: list[str] = field(default_factory=list)
    providers: dict[str, dict[str, ProviderConfig]] = field(default_factory=dict)
    instances: dict[str, dict[InstanceKey, Instance]] = field(default_factory=dict)
    #: Each Eval's dataset as read with the manifests: "sha256:<hex>" of its bytes (what
    #: binds an eval's evidence to the cases it ran).
    eval_datasets: dict[str, str] = field(default_factory=dict)

    def policy(self, env: str) -> m.EnvironmentSpec:
        return self.manifests.environments[env].model.spec

    def count(self) -> int:
        return sum(len(v) for v in self.instances.values())


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        cur = out.get(k)
        if (
            isinstance(v, Mapping)
            and isinstance(cur, Mapping)
            and secret_ref(v) is None
            and secret_ref(cur) is None
        ):
            out[k] = deep_merge(cur, v)
        else:
            out[k] = v
    return out


def _dump(model: Any, *, partial: bool) -> dict[str, Any]:
    data: dict[str, Any] = model.model_dump(
        mode="json",
        by_alias=True,
        exclude_none=True,
        exclude_unset=partial,
        exclude={"environments", "overrides"},
    )
    return data


class _Expander:
    def __init__(self, manifests: Manifests, read_file: ReadFile) -> None:
        self.r = manifests
        self.read_file = read_file
        self.out: list[Diagnostic] = []
        self._templates: dict[tuple[str, str], str | None] = {}
        self._dumps: dict[int, tuple[Any, dict[str, Any]]] = {}

    def dump(self, spec: Any) -> dict[str, Any]:
        """The spec as JSON data, dumped once for all its environments; a fresh top
        level each call (callers replace top-level keys, never edit nested values)."""
        hit = self._dumps.get(id(spec))
        if hit is None or hit[0] is not spec:
            hit = self._dumps[id(spec)] = (spec, _dump(spec, partial=False))
        return dict(hit[1])

    def at(self, e: Entry[Any], env: str | None, *loc: str | int, msg: str) -> None:
        pos = self._where(e, env, loc)
        self.out.append(Diagnostic(e.path, pos.line, pos.col, msg))

    def _where(self, e: Entry[Any], env: str | None, loc: tuple[str | int, ...]) -> Pos:
        if env is not None:
            ov = e.raw.get("spec", {}).get("overrides", {}).get(env)
            if isinstance(ov, dict) and _has(ov, loc):
                return locate(e.raw, ["spec", "overrides", env, *loc])
        return locate(e.raw, ["spec", *loc])

    def provider(self, p: Entry[m.Provider], env: str) -> ProviderConfig:
        spec = p.model.spec
        config: dict[str, Any] = dict(spec.config)
        credentials = dict(spec.credentials)
        models = spec.models
        ov = spec.overrides.get(env)
        if ov is not None:
            if ov.config is not None:
                config = deep_merge(config, ov.config)
            if ov.credentials is not None:
                credentials.update(ov.credentials)
            if ov.models is not None:
                models = ov.models
        return ProviderConfig(
            name=p.name,
            type=spec.type,
            environment=env,
            config=config,
            credentials=credentials,
            models=tuple(models) if models is not None else None,
        )

    def template(self, prompt: Entry[m.Prompt], version: str) -> str | None:
        key = (prompt.name, version)
        if key in self._templates:
            return self._templates[key]
        text: str | None = None
        for i, v in enumerate(prompt.model.spec.versions):
            if v.version != version:
                continue
            if v.template is not None:
                text = v.template
            elif v.template_file is not None:
                text = self._read_template(prompt, i, v.template_file)
        self._templates[key] = text
        return text

    def _read_template(self, prompt: Entry[m.Prompt], i: int, rel: str) -> str | None:
        where = prompt.pos("spec", "versions", i, "templateFile")
        target = posixpath.normpath(posixpath.join(posixpath.dirname(prompt.path), rel))
        if rel.startswith("/") or target.startswith("../") or target == "..":
            self.out.append(
                Diagnostic(
                    prompt.path, where.line, where.col, f"templateFile {rel!r} is outside the repo"
                )
            )
            return None
        try:
            data = self.read_file(target)
        except ReconcilerError as e:  # e.g. a symlink that leads outside the repo
            self.out.append(
                Diagnostic(prompt.path, where.line, where.col, f"templateFile {rel!r}: {e.message}")
            )
            return None
        if data is None:
            self.out.append(
                Diagnostic(
                    prompt.path,
                    where.line,
                    where.col,
                    f"templateFile {rel!r} not found (looked for {target})",
                )
            )
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.out.append(
                Diagnostic(
                    prompt.path, where.line, where.col, f"templateFile {target} is not UTF-8 text"
                )
            )
            return None

    def dataset(self, ev: Entry[m.Eval]) -> str | None:
        """The digest of an Eval's dataset (repo-relative, read as the manifests are)."""
        rel = ev.model.spec.dataset
        where = ev.pos("spec", "dataset")
        target = posixpath.normpath(rel)
        why = None
        data = None
        if rel.startswith("/") or target.startswith("../") or target == "..":
            why = f"dataset {rel!r} is outside the repo"
        else:
            try:
                data = self.read_file(target)
            except ReconcilerError as e:  # e.g. a symlink that leads outside the repo
                why = f"dataset {rel!r}: {e.message}"
            if why is None and data is None:
                why = f"dataset {rel!r} not found"
        if data is None:
            self.out.append(Diagnostic(ev.path, where.line, where.col, why or "no dataset"))
            return None
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def deployment(
        self, d: Entry[m.Deployment], env: str, providers: Mapping[str, ProviderConfig]
    ) -> Instance | None:
        spec = d.model.spec
        resolved = self.dump(spec)
        ov = spec.overrides.get(env)
        if ov is not None:
            resolved = deep_merge(resolved, _dump(ov, partial=True))
        ok = True
        pname = resolved["provider"]
        pc = providers.get(pname)
        if pname in self.r.providers and pc is None:
            self.at(d, env, "provider", msg=f"provider {pname!r} is not available in {env!r}")
            ok = False
        if pc is not None and pc.models and resolved["model"] not in pc.models:
            self.at(
                d,
                env,
                "model",
                msg=f"model {resolved['model']!r} is not in provider {pname!r}'s catalogue"
                f" for {env!r}{did_you_mean(resolved['model'], pc.models)}",
            )
            ok = False
        for block, ptype in m.PROVIDER_BLOCKS.items():
            if block in resolved and pc is not None and pc.type != ptype:
                self.at(
                    d,
                    env,
                    block,
                    msg=f"a `{block}` block is for a provider of type {ptype!r}; provider "
                    f"{pname!r} is of type {pc.type!r} in {env!r} (put the block in the "
                    "override of the environment that uses it)",
                )
                ok = False
        scaling = resolved.get("scaling")
        if scaling and scaling["minReplicas"] > scaling["maxReplicas"]:
            self.at(
                d,
                env,
                "scaling",
                msg=f"scaling.minReplicas ({scaling['minReplicas']}) exceeds maxReplicas "
                f"({scaling['maxReplicas']}) in {env!r}",
            )
            ok = False
        if "prompt" in resolved:
            name, _, version = resolved["prompt"].partition("@")
            prompt = self.r.prompts.get(name)
            text = self.template(prompt, version) if prompt is not None else None
            if text is None:
                ok = False
            else:
                resolved["prompt"] = {"name": name, "version": version, "template": text}
        if not ok or pname not in self.r.providers:
            return None
        return Instance(
            environment=env,
            kind="Deployment",
            name=d.name,
            provider=pname,
            spec=resolved,
            labels=dict(d.model.metadata.labels),
            source=Source(d.path, d.raw.pos.line),
        )

    def schedule(
        self, s: Entry[m.Schedule], env: str, instances: Mapping[InstanceKey, Instance]
    ) -> Instance | None:
        spec = s.model.spec
        resolved = self.dump(spec)
        ov = spec.overrides.get(env)
        if ov is not None:
            over = _dump(ov, partial=True)
            if "cron" in over:
                resolved.pop("interval", None)
            if "interval" in over:
                resolved.pop("cron", None)
            resolved = deep_merge(resolved, over)
        dep_key = InstanceKey(env, "Deployment", spec.deployment)
        dep = instances.get(dep_key)
        if dep is None:  # unknown, not in this environment, or invalid: reported already
            return None
        return Instance(
            environment=env,
            kind="Schedule",
            name=s.name,
            provider=dep.provider,
            spec=resolved,
            labels=dict(s.model.metadata.labels),
            source=Source(s.path, s.raw.pos.line),
            depends_on=(dep_key,),
        )


def normalise_endpoint(path: str) -> str:
    """The path a router serves: `//` collapsed, no trailing `/` (`/chat/`, `//chat`
    and `/chat` are one endpoint)."""
    if "//" not in path and not path.endswith("/"):
        return path
    return re.sub(r"/{2,}", "/", path).rstrip("/") or "/"


def _has(data: Any, loc: tuple[str | int, ...]) -> bool:
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def expand(manifests: Manifests, read_file: ReadFile, out: list[Diagnostic]) -> Desired:
    """Build every instance; per-environment problems go to `out`."""
    x = _Expander(manifests, read_file)
    desired = Desired(manifests=manifests, environments=list(manifests.environments))
    for prompt in manifests.prompts.values():  # every templateFile must exist, used or not
        for v in prompt.model.spec.versions:
            x.template(prompt, v.version)
    for ev in manifests.evals.values():
        digest = x.dataset(ev)
        if digest is not None:
            desired.eval_datasets[ev.name] = digest
    for env in desired.environments:
        providers = {
            p.name: x.provider(p, env)
            for p in manifests.providers.values()
            if env in p.model.spec.environments
        }
        desired.providers[env] = providers
        instances: dict[InstanceKey, Instance] = {}
        endpoints: dict[str, str] = {}
        for d in manifests.deployments.values():
            if env not in d.model.spec.environments:
                continue
            inst = x.deployment(d, env, providers)
            if inst is None:
                continue
            endpoint = inst.spec.get("endpoint")
            if endpoint is not None:
                path = normalise_endpoint(endpoint)
                if path in endpoints:
                    same = "" if path == endpoint else f" (both are {path!r})"
                    x.at(
                        d,
                        env,
                        "endpoint",
                        msg=f"endpoint {endpoint!r} is already used by deployment "
                        f"{endpoints[path]!r} in {env!r}{same}",
                    )
                    continue
                endpoints[path] = d.name
            instances[inst.key] = inst
        for s in manifests.schedules.values():
            if env not in s.model.spec.environments:
                continue
            inst = x.schedule(s, env, instances)
            if inst is not None:
                instances[inst.key] = inst
        desired.instances[env] = instances
    out.extend(x.out)
    return desired
