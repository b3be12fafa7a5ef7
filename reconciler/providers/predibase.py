"""Predibase private deployments: a base model served by LoRAX, adapters on top.

What maps to what (README "Predibase deployments", docs/providers.md):

    name             predibase.deploymentName, else the deployment's name
    config.baseModel `model` (a short name from Predibase's catalogue or a Hub path)
    accelerator      scaling.hardware (e.g. a10_24gb_100); fixed at creation: a change
                     is a replacement. Left out, Predibase picks one (and it is not
                     compared for drift)
    config           minReplicas, maxReplicas: scaling; cooldownTime, scaleUpRequest-
                     Threshold, maxTotalTokens, preloadedAdapters, quantization (fixed at
                     creation): the `predibase` block. A field the manifests leave out is
                     not sent (null in an update keeps Predibase's value) nor compared
    description      "managed by reconciler: deployment.<name> in <environment>", the
                     ownership mark (Predibase deployments carry no tags)

Adapters are not objects here: LoRAX serves any adapter of the tenant per request on the
deployment's base model (`adapter_id` in the request); `predibase.adapters` only says
which ones a replica loads when it starts.

Creating is GET, then POST /v2/deployments when absent (a POST is not retried once
sent; the next run's GET finds one whose answer was lost). Updating is PUT
/v2/deployments/{name} with the config (`baseModel` always, it is required) and the
description. Both return at once; `status` then goes pending/initializing/updating →
ready, which `status()` reports (ready: Healthy; failed or errored: Degraded; stopped:
Degraded too, since reconciler never stops one; anything else: Progressing). Deleting
needs the ownership mark; shared deployments (Predibase's own) are never touched.

Running a deployment (`reconciler run`) is its OpenAI-compatible chat completions on
Predibase's serving host: `POST {config.servingUrl}/{config.tenant}/deployments/v2/llms/
{name}/v1/chat/completions` with `model: ""` (the base model; an adapter would be
`repo/version`), the same bearer token (docs.predibase.com, "Migrate from OpenAI":
`base_url = f"https://serving.app.predibase.com/{tenant_id}/deployments/v2/llms/
{model_name}/v1"`; the SDK's `openai_compatible_endpoint`). The tenant ID is the one
under Settings > My Profile; without config.tenant a run says so.

Suspending is refused at validate: Predibase's API has no stop (the update config has
no state or paused field; `stopped` is a status only Predibase sets).

API: the official SDK `predibase` (2025.10.3) `resources/deployments.py`, `config.py`
(`DeploymentConfig`, `UpdateDeploymentConfig`), `resources/deployment.py`, `_client.py`:
base URL https://api.app.predibase.com, a bearer token (PREDIBASE_API_TOKEN).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from reconciler.instances import Instance, ProviderConfig
from reconciler.providers.base import (
    DeleteRule,
    HealthStatus,
    Invocation,
    InvokeTarget,
    LiveObject,
    Problem,
)
from reconciler.providers.invoke import chat_completion, chat_messages
from reconciler.providers.vendor import (
    POLL_LATER,
    ClientOptions,
    ConfigReader,
    VendorProvider,
    bearer_options,
    get_path,
    overlay,
)
from reconciler.vocabulary import Health

BASE_URL = "https://api.app.predibase.com"
#: Where deployments answer (the SDK's `_DEFAULT_SERVING_ENDPOINT`).
SERVING_URL = "https://serving.app.predibase.com"
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
#: Statuses in which a deployment answers requests (what the SDK treats as serving).
SERVING = ("ready", "updating")
#: What Predibase calls the deployments its users make (the SDK's list filter also
#: knows `dedicated` and `serverless`); `shared` ones are Predibase's own.
SHARED = "shared"
OWNER_PREFIX = "managed by reconciler: "
DEPLOYMENT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
DEPLOYMENT_HINT = "1 to 63 lowercase letters, digits or '-', not starting or ending with '-'"
ACCELERATOR = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
ADAPTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[0-9]+")
#: status → health. `ready` and `updating` are what the SDK treats as serving, and
#: `failed`, `deleted` and `stopped` what it stops waiting on; Predibase shows other
#: words while a deployment starts, which read as Progressing.
HEALTH: dict[str, Health] = {
    "ready": "Healthy",
    "failed": "Degraded",
    "errored": "Degraded",
    "stopped": "Degraded",
    "deleted": "Missing",
}
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 4
#: block key → Predibase config key, for the fields an update may change.
UPDATABLE = {
    "cooldownSeconds": "cooldownTime",
    "scaleUpThreshold": "scaleUpRequestThreshold",
    "maxTotalTokens": "maxTotalTokens",
    "adapters": "preloadedAdapters",
}
_UNUSED = {
    "prompt": "a deployment serves a base model; a prompt belongs to the application (or a "
    "langfuse provider)",
    "options": "LoRAX takes sampling options per request, not per deployment",
    "endpoint": "each Predibase deployment has its own URL",
    "timeoutSeconds": "a Predibase deployment has no request timeout setting",
    "env": "a Predibase deployment takes no environment variables",
    "enabled": "Predibase's API has no way to stop a deployment; scaling.minReplicas: 0 "
    "lets it scale to zero when idle",
}


@dataclass(frozen=True)
class Settings:
    base_url: str
    timeout: float
    retries: int
    token_env: str
    serving_url: str = SERVING_URL
    #: The tenant ID serving URLs carry; only a run needs it ("" when not set).
    tenant: str = ""


def read_settings(r: ConfigReader) -> Settings:
    tenant = r.text("tenant", pattern=TENANT, hint="the tenant ID from Settings > My Profile")
    return Settings(
        base_url=r.url("baseUrl", BASE_URL),
        timeout=r.number("timeoutSeconds", DEFAULT_TIMEOUT),
        retries=r.integer("retries", DEFAULT_RETRIES),
        token_env=r.credential("tokenEnv", "PREDIBASE_API_TOKEN"),
        serving_url=r.url("servingUrl", SERVING_URL),
        tenant=tenant,
    )


def block(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    value = spec.get("predibase")
    return value if isinstance(value, Mapping) else {}


def deployment_name(name: str, spec: Mapping[str, Any]) -> str:
    return str(block(spec).get("deploymentName") or name)


def owner_mark(name: str, environment: str) -> str:
    return f"{OWNER_PREFIX}deployment.{name} in {environment}"


def wanted_config(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The Predibase config the manifests set, in Predibase's names (creation fields
    included); what they leave out is absent."""
    b = block(spec)
    scaling = spec.get("scaling")
    out: dict[str, Any] = {"baseModel": spec.get("model")}
    if isinstance(scaling, Mapping):
        if scaling.get("hardware"):
            out["accelerator"] = scaling["hardware"]
        for key in ("minReplicas", "maxReplicas"):
            if scaling.get(key) is not None:
                out[key] = scaling[key]
    for key, theirs in UPDATABLE.items():
        if b.get(key) is not None:
            out[theirs] = b[key]
    if b.get("quantization") is not None:
        out["quantization"] = b["quantization"]
    return out


class PredibaseProvider(VendorProvider[Settings]):
    """Private Predibase deployments in the token's tenant; config: baseUrl,
    timeoutSeconds, retries; credentials: tokenEnv."""

    type_name: ClassVar[str] = "predibase"
    replace_fields: ClassVar[Mapping[str, str]] = {
        "predibase.deploymentName": "the name is the deployment's address",
        "scaling.hardware": "Predibase cannot change a deployment's accelerator by an update",
        "predibase.quantization": "Predibase's update config has no quantization",
    }
    #: A GPU replica with its base model commonly takes 5 to 15 minutes to be ready.
    readiness_timeout: ClassVar[float] = 1800.0
    poll_interval: ClassVar[float] = 15.0
    suspend_refusal: ClassVar[str | None] = (
        "Predibase's API has no way to stop a deployment (its update config has no state, "
        "and `stopped` is a status only Predibase sets); scaling.minReplicas: 0 lets it "
        "scale to zero when idle, or delete it"
    )
    can_invoke: ClassVar[bool] = True

    @classmethod
    def config_keys(cls) -> frozenset[str]:
        return frozenset({"baseUrl", "timeoutSeconds", "retries", "servingUrl", "tenant"})

    @classmethod
    def credential_keys(cls) -> frozenset[str]:
        return frozenset({"tokenEnv"})

    def read_settings(self, reader: ConfigReader) -> Settings:
        return read_settings(reader)

    def client_options(self) -> ClientOptions:
        return bearer_options(self, self.settings, "a Predibase API token", "/v2")

    # -- plan time ---------------------------------------------------------------------------

    @classmethod
    def delete_rule(
        cls, config: ProviderConfig, kind: str, name: str, body: Mapping[str, Any]
    ) -> DeleteRule:
        return DeleteRule(
            note=f"deletes Predibase deployment {deployment_name(name, body)!r} for good: its "
            "URL stops answering, for the base model and every adapter served on it"
        )

    def identity(self, inst: Instance) -> str | None:
        """The tenant is the token's: two environments whose tokens come from one
        variable are taken to share one, so they cannot both have a deployment's name."""
        if inst.kind != "Deployment":
            return None
        s = self.settings
        name = deployment_name(inst.name, inst.spec)
        return f"{s.base_url}/v2/deployments/{name} with the token in {s.token_env}"

    def validate(self, inst: Instance) -> list[str | Problem]:
        problems = self.deployment_problems(inst, _UNUSED)
        if inst.kind != "Deployment":
            return problems
        spec, b = inst.spec, block(inst.spec)
        name = deployment_name(inst.name, spec)
        if not DEPLOYMENT_NAME.fullmatch(name):
            at = ("predibase", "deploymentName") if b.get("deploymentName") else ("predibase",)
            hint = "" if b.get("deploymentName") else " (set predibase.deploymentName)"
            problems.append(
                Problem(f"{name!r} is not a deployment name: {DEPLOYMENT_HINT}{hint}", at)
            )
        scaling = spec.get("scaling")
        hardware = scaling.get("hardware") if isinstance(scaling, Mapping) else None
        if hardware is not None and not ACCELERATOR.fullmatch(str(hardware)):
            problems.append(
                Problem(
                    f"scaling.hardware {hardware!r} is not a Predibase accelerator such as "
                    "a10_24gb_100 or a100_80gb_100",
                    ("scaling", "hardware"),
                )
            )
        for i, adapter in enumerate(b.get("adapters") or []):
            if not ADAPTER.fullmatch(str(adapter)):
                problems.append(
                    Problem(
                        f"predibase.adapters: {adapter!r} is not an adapter id such as "
                        "support-bot/3 (repository/version)",
                        ("predibase", "adapters", i),
                    )
                )
        return problems

    # -- the API -------------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return f"deployments/{quote(name, safe='')}"

    def _get(self, name: str, *, polling: bool = False) -> dict[str, Any] | None:
        """The deployment (the answer's `data`), or None; `polling` (a health poll) hands
        a 429/503 back to apply as RetryAfter instead of waiting for it here."""
        client = self.http()
        resp = client.request(
            "GET", self._path(name), ok=(200, 404, *POLL_LATER) if polling else (200, 404)
        )
        if polling:
            self.poll_later(resp)
        if resp.status_code == 404:
            return None
        data = client.json_object(resp).get("data")
        if not isinstance(data, dict):
            raise self.error(f"GET {self._path(name)}", "the answer has no deployment in `data`")
        return data

    def _check_owner(self, live: Mapping[str, Any], name: str, environment: str) -> None:
        where = f"Predibase deployment {live.get('name')!r}"
        if live.get("type") == SHARED:
            raise self.error(
                f"deployment.{name}",
                f"{where} is a shared deployment, run by Predibase; nothing was changed. "
                "Give this deployment another predibase.deploymentName",
            )
        description = str(live.get("description") or "")
        if description == owner_mark(name, environment):
            return
        if not description.startswith(OWNER_PREFIX):
            raise self.error(
                f"deployment.{name}",
                f"{where} exists and was not made by reconciler (its description is not "
                f"{OWNER_PREFIX!r}…); nothing was changed. Give this deployment another "
                "predibase.deploymentName, or set the deployment's description to "
                f"{owner_mark(name, environment)!r} to adopt it",
            )
        raise self.error(
            f"deployment.{name}",
            f"{where} is {description.removeprefix(OWNER_PREFIX)!r}, not deployment.{name} in "
            f"{environment!r}; nothing was changed",
        )

    def _write(self, inst: Instance, live: Mapping[str, Any] | None) -> str:
        name = deployment_name(inst.name, inst.spec)
        config = wanted_config(inst.spec)
        description = owner_mark(inst.name, inst.environment)
        client = self.http()
        if live is None:
            # Not retried once sent (it may have been made): the next run's GET finds it.
            resp = client.request(
                "POST",
                "deployments",
                json={"name": name, "config": config, "description": description},
                ok=(200, 201, 409),
            )
            if resp.status_code == 409:  # made meanwhile (a lost answer): adopt if ours
                return self._write(inst, self._require(inst, name))
            written = self._get(name)
        else:
            self._check_owner(live, inst.name, inst.environment)
            self._check_fixed(inst, live, config)
            update = {k: v for k, v in config.items() if k not in ("accelerator", "quantization")}
            client.request(
                "PUT", self._path(name), json={"config": update, "description": description}
            )
            written = self._get(name)
        if written is None:
            raise self.error(inst.key.address, f"Predibase deployment {name!r} vanished")
        return f"{name}/{written.get('uuid')}"

    def _check_fixed(
        self, inst: Instance, live: Mapping[str, Any], config: Mapping[str, Any]
    ) -> None:
        """An update cannot change what creation fixed: say so rather than send it."""
        for key, have in (
            ("accelerator", get_path(live, "accelerator.id")),
            ("quantization", live.get("quantization")),
        ):
            want = config.get(key)
            if want is not None and want != have:
                raise self.error(
                    inst.key.address,
                    f"the live deployment has {key} {have!r}, the manifests say {want!r}, and "
                    "Predibase sets it only at creation; `reconciler plan` shows that as a "
                    "replace when the recorded value differs: re-plan",
                )

    def _require(self, inst: Instance, name: str) -> dict[str, Any]:
        live = self._get(name)
        if live is None:
            raise self.error(
                inst.key.address,
                f"Predibase deployment {name!r} was reported to exist and cannot be found",
            )
        return live

    @staticmethod
    def _name(name: str, provider_id: str | None) -> str:
        """The Predibase name: the recorded id's (name/uuid), else the deployment's."""
        if provider_id and "/" in provider_id:
            return provider_id.rsplit("/", 1)[0]
        return name

    # -- the contract --------------------------------------------------------------------------

    def read(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> LiveObject | None:
        pb = self._name(name, provider_id)
        live = self._get(pb)
        return None if live is None else LiveObject(f"{pb}/{live.get('uuid')}", live)

    def status(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> HealthStatus:
        live = self._get(self._name(name, provider_id), polling=True)
        if live is None:
            return HealthStatus("Missing", "no such Predibase deployment")
        state = str(live.get("status") or "")
        health = HEALTH.get(state, "Progressing")
        if state == "stopped":
            return HealthStatus(health, "stopped (reconciler does not start a deployment)")
        replicas = live.get("currentReplicas")
        suffix = f", {replicas} replica(s)" if isinstance(replicas, int) else ""
        return HealthStatus(health, f"{state or 'no status'}{suffix}")

    def create(self, inst: Instance) -> str:
        return self._write(inst, self._get(deployment_name(inst.name, inst.spec)))

    def update(self, inst: Instance, provider_id: str) -> None:
        name = deployment_name(inst.name, inst.spec)
        if self._name(inst.name, provider_id) != name:
            raise self.error(
                inst.key.address,
                f"recorded as {provider_id}, but the manifests now say {name}; that is a "
                "replace, which `reconciler plan` shows: re-plan",
            )
        live = self._get(name)
        if live is None:
            raise self.error(
                inst.key.address,
                f"Predibase deployment {name!r} no longer exists (removed outside reconciler); "
                "`reconciler drift --heal` recreates it",
            )
        self._write(inst, live)

    def delete(self, kind: str, name: str, environment: str, provider_id: str | None) -> None:
        pb = self._name(name, provider_id)
        live = self._get(pb)
        if live is None:
            return
        self._check_owner(live, name, environment)
        self.http().request("DELETE", self._path(pb), ok=(200, 202, 204, 404))

    def live_body(self, live: LiveObject, recorded: Mapping[str, Any]) -> dict[str, Any]:
        want = wanted_config(recorded)
        have = live.body
        config = have.get("config") if isinstance(have.get("config"), Mapping) else {}
        assert isinstance(config, Mapping)
        fields: list[tuple[str, Any, Any]] = [
            ("model", want.get("baseModel"), config.get("baseModel")),
        ]
        if "accelerator" in want:
            fields.append(
                ("scaling.hardware", want["accelerator"], get_path(have, "accelerator.id"))
            )
        for key in ("minReplicas", "maxReplicas"):
            if key in want:
                fields.append((f"scaling.{key}", want[key], config.get(key)))
        for key, theirs in UPDATABLE.items():
            if theirs in want:
                fields.append((f"predibase.{key}", want[theirs], config.get(theirs)))
        if "quantization" in want:
            fields.append(
                ("predibase.quantization", want["quantization"], have.get("quantization"))
            )
        return overlay(recorded, fields)

    # -- running a deployment --------------------------------------------------------------

    def invoke(self, target: InvokeTarget, input: Mapping[str, Any], deadline: float) -> Invocation:
        """The deployment's OpenAI-compatible chat completions on Predibase's serving
        host (`.../{tenant}/deployments/v2/llms/{name}/v1/chat/completions`, `model: ""`
        for the base model), after `GET /v2/deployments/{name}` says it is this
        deployment's and serving (ready or updating). `messages` from the input's
        `messages`, else one user message with the input as JSON; usage from the
        answer's `usage`. Sent once; its deadline is config.timeoutSeconds."""
        where = f"deployment.{target.name}"
        if not self.settings.tenant:
            raise self.error(
                where,
                "config.tenant is needed to run a deployment: the Predibase tenant ID its "
                "serving URLs carry (Settings > My Profile in Predibase)",
            )
        pb = self._name(target.name, target.provider_id)
        live = self._get(pb)
        if live is None:
            raise self.error(
                where,
                f"Predibase deployment {pb!r} does not exist (removed outside reconciler)",
            )
        self._check_owner(live, target.name, target.environment)
        status = str(live.get("status") or "")
        if status not in SERVING:
            raise self.error(
                where,
                f"Predibase deployment {pb!r} is {status or 'in no status'}: it answers only "
                f"when {' or '.join(SERVING)}",
            )
        url = (
            f"{self.settings.serving_url}/{quote(self.settings.tenant, safe='')}/deployments/"
            f"v2/llms/{quote(pb, safe='')}/v1/chat/completions"
        )
        body = {"model": "", "messages": chat_messages(target.spec, input)}
        return chat_completion(self.http(), url, body)
