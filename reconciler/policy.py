"""The policy of record: what an environment is judged by is never what the change under
judgement says (docs/design.md, "The gate").

A policy is everything that decides who must approve a change and where an environment's
data may go: the environment's spec (protection, approvals, deploy windows, overrides,
sync, notify), the approval settings of `reconciler.yaml` (where approvals come from), the
settings of every provider the environment uses (URL, credential variables, any config),
and the environment variables its manifests read. Every run records the policy it applied;
the newest applied run's is the policy of record.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.config import ApprovalsConfig
from reconciler.instances import ProviderConfig
from reconciler.manifests import Desired
from reconciler.manifests.models import EnvironmentSpec
from reconciler.vocabulary import RISKS

_CONVENTIONAL_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def recorded_name(name: str) -> str:
    """A variable's name as a policy records it. A "name" not written like a variable
    (`tokenEnv: hunter2`) may be the credential itself, typed in the wrong place: the
    record keeps a digest of it, never the text."""
    if _CONVENTIONAL_VAR.match(name):
        return name
    return "(sensitive " + hashlib.sha256(name.encode()).hexdigest()[:16] + ")"


def provider_documents(providers: Mapping[str, ProviderConfig]) -> dict[str, Any]:
    """The provider settings an environment resolves to, as recorded in its policy."""
    return {
        name: {
            "type": pc.type,
            "config": pc.config,
            "credentials": {k: recorded_name(v) for k, v in sorted(pc.credentials.items())},
            **({"models": list(pc.models)} if pc.models is not None else {}),
        }
        for name, pc in sorted(providers.items())
    }


def policy_document(
    spec: EnvironmentSpec,
    approvals: ApprovalsConfig,
    providers: Mapping[str, Any] | None = None,
    variables: list[str] | None = None,
    evals: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The recorded form: the spec without its description, the approval source, the
    provider settings, the variables read and the Evals its promotion requires (only
    when it requires some: a policy recorded before evals were part of it stays the
    same policy). The `file` source's path is not part of it: it never comes from the
    repo."""
    return {
        "environment": spec.model_dump(mode="json", by_alias=True, exclude={"description"}),
        "approvals": {"source": approvals.source, "repository": approvals.repository},
        "providers": dict(providers or {}),
        "variables": sorted(variables or ()),
        **({"evals": dict(evals)} if evals else {}),
    }


def required_evals(desired: Desired, env: str) -> dict[str, Any]:
    """The Evals `env`'s promotion requires, as its policy records them: each one's
    dataset digest, repeat and thresholds (`checks.evidence.eval_document`). So a change
    to a required Eval (its cases or its bar) is a change of policy, judged by the policy
    of record; one not declared is left out, and the gate refuses for it."""
    from reconciler.checks.evidence import eval_document

    promo = desired.policy(env).promotion
    out: dict[str, Any] = {}
    for name in promo.requires.evals if promo is not None else ():
        entry = desired.manifests.evals.get(name)
        dataset = desired.eval_datasets.get(name)
        if entry is not None and dataset is not None:
            out[name] = eval_document(entry.model.spec, dataset)
    return out


@dataclass(frozen=True)
class Policy:
    """A policy and where it came from (for the verdict's explanation)."""

    spec: EnvironmentSpec
    approvals: ApprovalsConfig
    #: "run <id> (commit <sha>)", "commit <sha>", "the change itself"
    origin: str
    #: Provider settings by name (`provider_documents`).
    providers: Mapping[str, Any] = field(default_factory=dict)
    #: The environment variables the environment's manifests read (secrets, tokens).
    variables: tuple[str, ...] = ()
    #: The Evals its promotion requires, by name (`required_evals`).
    evals: Mapping[str, Any] = field(default_factory=dict)
    #: False for a policy recorded before providers and variables were part of it: it
    #: says nothing about them, so it never equals a policy that does (fail closed).
    complete: bool = True

    @property
    def document(self) -> dict[str, Any]:
        doc = policy_document(
            self.spec, self.approvals, self.providers, list(self.variables), self.evals
        )
        if not self.complete:
            doc.pop("providers")
            doc.pop("variables")
        return doc

    def same_as(self, other: Policy) -> bool:
        return _canonical(self.document) == _canonical(other.document)

    def needs_approvals(self) -> bool:
        """Whether any change at all could need an approval under this policy."""
        a = self.spec.approvals
        return any(a.required_for(r) for r in RISKS) or any(
            a.required_for(r, is_rollback=True) for r in RISKS
        )

    @classmethod
    def from_document(cls, doc: dict[str, Any], origin: str) -> Policy:
        """A recorded policy; one that no longer validates fails closed (StateError)."""
        from pydantic import ValidationError

        from reconciler.errors import StateError

        try:
            spec = EnvironmentSpec.model_validate(doc["environment"], strict=False)
            approvals = ApprovalsConfig.model_validate(doc["approvals"], strict=False)
            complete = "providers" in doc and "variables" in doc
            providers = dict(doc.get("providers") or {})
            variables = tuple(str(v) for v in doc.get("variables") or ())
            evals = dict(doc.get("evals") or {})
        except (KeyError, TypeError, ValidationError) as e:
            raise StateError(f"the policy recorded by {origin} cannot be read: {e}") from None
        return cls(spec, approvals, origin, providers, variables, evals, complete)


def variables_read(desired: Desired, env: str) -> list[str]:
    """The variables `env` reads, as its policy records them, with the credentials its
    providers take from their surroundings (`Provider.ambient_credentials`)."""
    from reconciler.providers import provider_class

    names = {recorded_name(n) for n in variable_names(desired, env)}
    for pc in desired.providers.get(env, {}).values():
        names.update(provider_class(pc.type).ambient_credentials(pc))
    return sorted(names)


def variable_names(desired: Desired, env: str) -> set[str]:
    """Every environment variable `env`'s manifests make the reconciler read: its
    providers' credential variables and the `secretEnv` references of its deployments'
    `env` and its schedules' `input`. Read from the documents (a superset of what the
    expanded instances resolve to, and far fewer values to walk), in one pass for every
    environment, kept with the desired state (validation, plan and gate all ask)."""
    cached: dict[str, set[str]] | None = vars(desired).get("_variable_names")
    if cached is None:
        cached = _variable_names(desired)
        vars(desired)["_variable_names"] = cached
    return set(cached.get(env, ()))


def _variable_names(desired: Desired) -> dict[str, set[str]]:
    from reconciler.instances import secret_refs
    from reconciler.manifests.models import SecretRef

    out: dict[str, set[str]] = {
        env: {v for pc in desired.providers.get(env, {}).values() for v in pc.credentials.values()}
        for env in desired.environments
    }

    def add(env: str, names: set[str] | list[str]) -> None:
        if env in out:
            out[env].update(names)

    for d in desired.manifests.deployments.values():
        spec = d.model.spec
        base = {v.secret_env for v in spec.env.values() if isinstance(v, SecretRef)}
        for env in spec.environments:
            over = spec.overrides.get(env)
            add(env, base)
            if over is not None and over.env:
                add(env, {v.secret_env for v in over.env.values() if isinstance(v, SecretRef)})
    for sched in desired.manifests.schedules.values():
        sspec = sched.model.spec
        base_refs = secret_refs(sspec.input)
        for env in sspec.environments:
            sover = sspec.overrides.get(env)
            add(env, base_refs)
            if sover is not None and sover.input:
                add(env, secret_refs(sover.input))
    return out


def policy_at(desired: Desired, approvals: ApprovalsConfig, env: str, origin: str) -> Policy:
    """`env`'s policy as the manifests of one commit (or working tree) declare it."""
    return Policy(
        desired.policy(env),
        approvals,
        origin,
        provider_documents(desired.providers.get(env, {})),
        tuple(variables_read(desired, env)),
        required_evals(desired, env),
    )


def _canonical(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))
