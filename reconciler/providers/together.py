"""Together AI dedicated endpoints.

What maps to what (README "Together AI dedicated endpoints", docs/providers.md):

    endpoint         /v1/endpoints/{id}: Together chooses the id (`endpoint-<uuid>`),
                     which is the provider id recorded in state
    display_name     `reconciler <environment>/<deployment>`: how reconciler finds and
                     recognises its own endpoints (Together has no tags)
    model            model (fixed for life: a change is a replacement)
    scaling          hardware: scaling.hardware (fixed for life); autoscaling
                     {min_replicas, max_replicas}: scaling.minReplicas, maxReplicas
    together.*       inactive_timeout (minutes, updatable); availability_zone and
                     disable_speculative_decoding (set at creation only)
    enabled: false   state STOPPED (Suspended: intended, not a failure)
    suspended: true  the same: PATCH {state: STOPPED}; lifted, PATCH {state: STARTED}

Running a deployment (`reconciler run`) is Together's OpenAI-compatible chat
completions, `POST /v1/chat/completions`, with the endpoint's `name` as the model
(docs.together.ai, dedicated endpoints quickstart: "The endpoint name is passed to the
model parameter for API inference requests. The endpoint ID ... is used for management
operations like start, stop, update, and delete"); usage from the answer's `usage`.

Creating looks first: a dedicated endpoint of this account whose display name is this
deployment's is adopted (a POST whose answer was lost, a killed run), never made twice;
else one POST, which is not retried once sent (every POST makes a new endpoint). The
endpoint then goes PENDING → STARTING → STARTED, which `status()` reports (STARTED is
Healthy, ERROR Degraded, STOPPING and STOPPED Suspended). Updating is one PATCH of the
fields that differ. Before updating or deleting, the endpoint's display name must be
this deployment's.

API: Together's OpenAPI description (createEndpoint, getEndpoint, updateEndpoint,
deleteEndpoint, listEndpoints); base URL https://api.together.xyz/v1; a bearer key
(TOGETHER_API_KEY).
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
    overlay,
)
from reconciler.vocabulary import Health

BASE_URL = "https://api.together.xyz"
DISPLAY_PREFIX = "reconciler "
#: `<gpu_count>x_<vendor>_<gpu_type>_<gpu_memory>_<gpu_link>`, e.g. 2x_nvidia_h100_80gb_sxm.
HARDWARE = re.compile(r"[1-9][0-9]*x_[a-z0-9]+_[a-z0-9]+_[0-9]+gb_[a-z0-9]+")
HARDWARE_HINT = "a hardware id such as 1x_nvidia_a100_80gb_sxm (GET /v1/hardware lists them)"
MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*")
ENDPOINT_ID = re.compile(r"endpoint-[A-Za-z0-9-]+")
#: state → health (the DedicatedEndpoint schema's `state` enum).
HEALTH: dict[str, Health] = {
    "PENDING": "Progressing",
    "STARTING": "Progressing",
    "STARTED": "Healthy",
    "STOPPING": "Suspended",
    "STOPPED": "Suspended",
    "ERROR": "Degraded",
}
STOPPED = ("STOPPING", "STOPPED")
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 4
_UNUSED = {
    "prompt": "an endpoint serves a model; a prompt belongs to the application",
    "options": "an endpoint takes sampling options per request, not per endpoint",
    "endpoint": "each dedicated endpoint is called by its own name",
    "env": "a dedicated endpoint runs Together's serving stack; it takes no environment variables",
    "timeoutSeconds": "a dedicated endpoint has no request timeout setting (together."
    "inactiveTimeout stops it when idle)",
}


def health(state: str) -> Health:
    """One vendor state in Argo CD's words; one not known yet is Progressing."""
    return HEALTH.get(state, "Progressing")


@dataclass(frozen=True)
class Settings:
    base_url: str
    timeout: float
    retries: int
    token_env: str


def read_settings(r: ConfigReader) -> Settings:
    return Settings(
        base_url=r.url("baseUrl", BASE_URL),
        timeout=r.number("timeoutSeconds", DEFAULT_TIMEOUT),
        retries=r.integer("retries", DEFAULT_RETRIES),
        token_env=r.credential("tokenEnv", "TOGETHER_API_KEY"),
    )


def block(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    value = spec.get("together")
    return value if isinstance(value, Mapping) else {}


def display_name(name: str, environment: str) -> str:
    return f"{DISPLAY_PREFIX}{environment}/{name}"


@dataclass(frozen=True)
class Wanted:
    """What one deployment's spec asks of Together."""

    display_name: str
    model: str
    hardware: str
    autoscaling: dict[str, int]
    state: str
    inactive_timeout: int | None
    availability_zone: str | None
    disable_speculative_decoding: bool | None

    def create_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "display_name": self.display_name,
            "model": self.model,
            "hardware": self.hardware,
            "autoscaling": self.autoscaling,
            "state": self.state,
        }
        if self.inactive_timeout is not None:
            body["inactive_timeout"] = self.inactive_timeout
        if self.availability_zone is not None:
            body["availability_zone"] = self.availability_zone
        if self.disable_speculative_decoding is not None:
            body["disable_speculative_decoding"] = self.disable_speculative_decoding
        return body


def wanted(name: str, environment: str, spec: Mapping[str, Any]) -> Wanted:
    scaling = spec.get("scaling") or {}
    b = block(spec)
    return Wanted(
        display_name=display_name(name, environment),
        model=str(spec.get("model") or ""),
        hardware=str(scaling.get("hardware") or ""),
        autoscaling={
            "min_replicas": int(scaling.get("minReplicas", 1)),
            "max_replicas": int(scaling.get("maxReplicas", 1)),
        },
        state="STOPPED"
        if spec.get("enabled", True) is False or spec.get("suspended") is True
        else "STARTED",
        inactive_timeout=b.get("inactiveTimeout"),
        availability_zone=b.get("availabilityZone"),
        disable_speculative_decoding=b.get("disableSpeculativeDecoding"),
    )


class TogetherProvider(VendorProvider[Settings]):
    """Dedicated endpoints of one Together account; config: baseUrl, timeoutSeconds,
    retries; credentials: tokenEnv."""

    type_name: ClassVar[str] = "together"
    replace_fields: ClassVar[Mapping[str, str]] = {
        "model": "a dedicated endpoint serves one model for life (the update API does not take it)",
        "scaling.hardware": "a dedicated endpoint keeps its hardware for life (the update "
        "API does not take it)",
        "together.availabilityZone": "set when the endpoint is created only",
        "together.disableSpeculativeDecoding": "set when the endpoint is created only",
    }
    #: Together says a deploy takes up to 10 minutes.
    readiness_timeout: ClassVar[float] = 1200.0
    poll_interval: ClassVar[float] = 15.0
    #: `suspended: true` stops the endpoint (`PATCH {state: STOPPED}`, updateEndpoint);
    #: lifting it starts it again (`STARTED`). Stopped, it is not billed.
    suspend_refusal: ClassVar[str | None] = None
    can_invoke: ClassVar[bool] = True

    @classmethod
    def config_keys(cls) -> frozenset[str]:
        return frozenset({"baseUrl", "timeoutSeconds", "retries"})

    @classmethod
    def credential_keys(cls) -> frozenset[str]:
        return frozenset({"tokenEnv"})

    def read_settings(self, reader: ConfigReader) -> Settings:
        return read_settings(reader)

    def client_options(self) -> ClientOptions:
        return bearer_options(self, self.settings, "a Together API key", "/v1")

    # -- plan time ---------------------------------------------------------------------------

    @classmethod
    def delete_rule(
        cls, config: ProviderConfig, kind: str, name: str, body: Mapping[str, Any]
    ) -> DeleteRule:
        return DeleteRule(
            note=f"deletes Together dedicated endpoint {display_name(name, config.environment)!r}"
            " for good (enabled: false stops it instead)"
        )

    def validate(self, inst: Instance) -> list[str | Problem]:
        problems = self.deployment_problems(inst, _UNUSED)
        if inst.kind != "Deployment":
            return problems
        label = f"provider {self.name!r} (together)"
        spec = inst.spec
        model = str(spec.get("model") or "")
        if not MODEL.fullmatch(model):
            problems.append(
                Problem(
                    f"{model!r} is not a Together model id such as "
                    "meta-llama/Llama-3.3-70B-Instruct-Turbo",
                    ("model",),
                )
            )
        scaling = spec.get("scaling")
        scaling = scaling if isinstance(scaling, Mapping) else {}
        hardware = scaling.get("hardware")
        if not hardware:
            problems.append(
                Problem(
                    f"{label} needs scaling.hardware, {HARDWARE_HINT}",
                    ("scaling", "hardware") if scaling else ("model",),
                )
            )
        elif not HARDWARE.fullmatch(str(hardware)):
            problems.append(
                Problem(
                    f"scaling.hardware {hardware!r} is not {HARDWARE_HINT}",
                    ("scaling", "hardware"),
                )
            )
        if scaling.get("minReplicas", 1) == 0:
            problems.append(
                Problem(
                    "a dedicated endpoint runs at least one replica: to stop it when idle, set "
                    "together.inactiveTimeout (minutes); to stop it now, suspended: true",
                    ("scaling", "minReplicas"),
                )
            )
        return problems

    # -- the API -------------------------------------------------------------------------------

    def _path(self, endpoint_id: str) -> str:
        return f"endpoints/{quote(endpoint_id, safe='')}"

    def _get(self, endpoint_id: str, *, polling: bool = False) -> dict[str, Any] | None:
        client = self.http()
        resp = client.request(
            "GET", self._path(endpoint_id), ok=(200, 404, *POLL_LATER) if polling else (200, 404)
        )
        if polling:
            self.poll_later(resp)
        return None if resp.status_code == 404 else client.json_object(resp)

    def _find(self, name: str, environment: str) -> dict[str, Any] | None:
        """This deployment's endpoint, found by its display name among the account's
        dedicated endpoints (for a create whose answer was lost, or nothing recorded)."""
        client = self.http()
        resp = client.request("GET", "endpoints", params={"type": "dedicated", "mine": "true"})
        data = client.json_object(resp).get("data")
        if not isinstance(data, list):
            raise client.invalid(resp, "the endpoint list has no `data` list")
        mark = display_name(name, environment)
        found = [e for e in data if isinstance(e, Mapping) and e.get("display_name") == mark]
        if len(found) > 1:
            ids = ", ".join(sorted(str(e.get("id")) for e in found))
            raise self.error(
                f"deployment.{name}",
                f"{len(found)} dedicated endpoints are named {mark!r} ({ids}); delete the "
                "extra ones by hand, nothing was changed",
            )
        if not found:
            return None
        # The list shows a summary: read the endpoint itself.
        return self._get(str(found[0].get("id")))

    def _locate(
        self, name: str, environment: str, provider_id: str | None
    ) -> dict[str, Any] | None:
        if provider_id:
            return self._get(provider_id)
        return self._find(name, environment)

    def _check_owner(self, live: Mapping[str, Any], name: str, environment: str) -> None:
        mark = display_name(name, environment)
        have = live.get("display_name")
        if have == mark:
            return
        where = f"Together endpoint {live.get('id')}"
        if not (isinstance(have, str) and have.startswith(DISPLAY_PREFIX)):
            raise self.error(
                f"deployment.{name}",
                f"{where} is named {have!r}, not {mark!r}: reconciler did not make it (or it "
                "was renamed); nothing was changed",
            )
        raise self.error(
            f"deployment.{name}",
            f"{where} is {have!r}: it is not deployment.{name} in {environment!r}; nothing "
            "was changed",
        )

    def _patch(self, w: Wanted, live: Mapping[str, Any]) -> None:
        """One PATCH with what differs among the fields Together updates."""
        changes: dict[str, Any] = {}
        scale = live.get("autoscaling") or {}
        if {k: scale.get(k) for k in w.autoscaling} != w.autoscaling:
            changes["autoscaling"] = w.autoscaling  # both bounds, always together
        if w.inactive_timeout is not None and live.get("inactive_timeout") != w.inactive_timeout:
            changes["inactive_timeout"] = w.inactive_timeout
        state = str(live.get("state") or "")
        if w.state == "STOPPED" and state not in STOPPED:
            changes["state"] = "STOPPED"
        elif w.state == "STARTED" and state in (*STOPPED, "ERROR"):
            changes["state"] = "STARTED"
        if changes:
            self.http().request("PATCH", self._path(str(live["id"])), json=changes)

    def _same_endpoint(self, w: Wanted, live: Mapping[str, Any], address: str) -> None:
        """An endpoint serving another model or on other hardware is not this one: a
        change of either is a replacement, which the plan shows."""
        for field, want in (("model", w.model), ("hardware", w.hardware)):
            if live.get(field) != want:
                raise self.error(
                    address,
                    f"Together endpoint {live.get('id')} has {field} {live.get(field)!r}, not "
                    f"{want!r}; a {field} change is a replace, which `reconciler plan` shows: "
                    "re-plan",
                )

    # -- the contract --------------------------------------------------------------------------

    def read(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> LiveObject | None:
        live = self._locate(name, environment, provider_id)
        return None if live is None else LiveObject(str(live.get("id")), live)

    def status(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> HealthStatus:
        if provider_id:
            live = self._get(provider_id, polling=True)
        else:
            live = self._find(name, environment)
        if live is None:
            return HealthStatus("Missing", "no such dedicated endpoint")
        state = str(live.get("state") or "")
        return HealthStatus(health(state), f"{state or 'no state'} ({live.get('name')})")

    def create(self, inst: Instance) -> str:
        w = wanted(inst.name, inst.environment, inst.spec)
        live = self._find(inst.name, inst.environment)
        if live is None:
            client = self.http()
            # Not retried once sent: every POST makes an endpoint. The next run's look-up
            # by display name finds one whose answer was lost.
            made = client.json_object(client.request("POST", "endpoints", json=w.create_body()))
            ident = made.get("id")
            if not isinstance(ident, str) or not ENDPOINT_ID.fullmatch(ident):
                raise self.error(inst.key.address, f"the created endpoint's id is {ident!r}")
            return ident
        self._same_endpoint(w, live, inst.key.address)
        self._patch(w, live)
        return str(live["id"])

    def update(self, inst: Instance, provider_id: str) -> None:
        w = wanted(inst.name, inst.environment, inst.spec)
        live = self._get(provider_id)
        if live is None:
            raise self.error(
                inst.key.address,
                f"Together endpoint {provider_id} no longer exists (removed outside "
                "reconciler); `reconciler drift --heal` recreates it",
            )
        self._check_owner(live, inst.name, inst.environment)
        self._same_endpoint(w, live, inst.key.address)
        self._patch(w, live)

    def delete(self, kind: str, name: str, environment: str, provider_id: str | None) -> None:
        live = self._locate(name, environment, provider_id)
        if live is None:
            return
        self._check_owner(live, name, environment)
        self.http().request("DELETE", self._path(str(live["id"])), ok=(200, 204, 404))

    def live_body(self, live: LiveObject, recorded: Mapping[str, Any]) -> dict[str, Any]:
        env = str(recorded.get("environment") or "")
        w = wanted(str(recorded.get("name")), env, recorded)
        have = live.body
        scale = have.get("autoscaling") or {}
        state = str(have.get("state") or "")
        b = block(recorded)
        fields: list[tuple[str, Any, Any]] = [
            ("model", w.model, have.get("model")),
            ("scaling.hardware", w.hardware, have.get("hardware")),
            ("scaling.minReplicas", w.autoscaling["min_replicas"], scale.get("min_replicas")),
            ("scaling.maxReplicas", w.autoscaling["max_replicas"], scale.get("max_replicas")),
        ]
        want_on = w.state == "STARTED"
        if recorded.get("suspended") is True:
            # Started by hand (in the UI, say) reads as drift: suspended true -> false.
            fields.append(("suspended", True, state in STOPPED))
        elif not want_on:
            fields.append(("enabled", False, state not in STOPPED))
        elif state in STOPPED and w.inactive_timeout in (None, 0):
            # Stopped with no idle timeout to explain it: stopped by hand.
            fields.append(("enabled", True, False))
        # Left out of the manifests, Together keeps its own: only set ones drift.
        for key, field in (
            ("inactiveTimeout", "inactive_timeout"),
            ("availabilityZone", "availability_zone"),
            ("disableSpeculativeDecoding", "disable_speculative_decoding"),
        ):
            if b.get(key) is not None:
                fields.append((f"together.{key}", b[key], have.get(field)))
        return overlay(recorded, fields)

    # -- running a deployment --------------------------------------------------------------

    def invoke(self, target: InvokeTarget, input: Mapping[str, Any], deadline: float) -> Invocation:
        """Together's chat completions on the dedicated endpoint: `POST /v1/chat/
        completions` with `model` the endpoint's `name` (read from `GET /v1/endpoints/
        {id}` first: it must be this deployment's, and STARTED), `messages` from the
        input's `messages`, else one user message with the input as JSON. Usage from
        the answer's `usage.prompt_tokens`, `completion_tokens` (the OpenAI shape
        Together's chat completions reference documents). Sent once; its deadline is
        config.timeoutSeconds."""
        where = f"deployment.{target.name}"
        live = self._locate(target.name, target.environment, target.provider_id)
        if live is None:
            raise self.error(
                where, "the dedicated endpoint does not exist (removed outside reconciler)"
            )
        self._check_owner(live, target.name, target.environment)
        state, model = live.get("state"), live.get("name")
        if state != "STARTED":
            raise self.error(
                where,
                f"Together endpoint {live.get('id')} is {state or 'in no state'}: it answers "
                "only when STARTED",
            )
        if not isinstance(model, str) or not model:
            raise self.error(where, f"Together endpoint {live.get('id')} has no name to call")
        body = {"model": model, "messages": chat_messages(target.spec, input)}
        return chat_completion(self.http(), "chat/completions", body)
