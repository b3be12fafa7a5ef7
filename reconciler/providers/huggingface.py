"""Hugging Face Inference Endpoints.

What maps to what (README "Hugging Face Inference Endpoints", docs/providers.md):

    endpoint         /v2/endpoint/{config.namespace}/{huggingface.endpointName, else the
                     deployment's name}
    model            repository: huggingface.repository, else `model`; revision, task and
                     framework (default pytorch) from the block
    model.image      huggingface.image: {engine: huggingface|tgi|tei|vllm|sglang|llamacpp|
                     custom, url, port, healthRoute} → {<engine>: {url, port, healthRoute}}
    model.env        `env`'s plain values; model.secrets: its secret references, with the
                     values taken from this process's environment
    compute          instanceType: scaling.hardware; instanceSize: huggingface.instanceSize
                     (default x1); accelerator: gpu for nvidia-*, neuron for inf2/trn*,
                     else cpu; scaling: minReplicas, maxReplicas, scaleToZeroTimeout,
                     measure {huggingface.autoscaling.metric: threshold}
    route            huggingface.route {domain, path}
    provider, type   vendor, region and type from the block, else the provider's config,
                     else aws, us-east-1, authenticated
    tags             reconciler-env:<environment>, reconciler-deployment:<name> (whose it is)
    enabled: false   a paused endpoint (Suspended: intended, not a failure)
    suspended: true  the same: POST .../pause, and POST .../resume when it is lifted

Creating is GET then POST when absent (the name is the address; a POST whose answer
was lost is found by the next GET, never made twice); updating is PUT with the managed
parts (`compute`, `model`, `tags`, `route`), a partial body that carries only what the
manifest sets: an engine, framework, instance size, autoscaling metric or route picked
in the UI stays as it is unless the manifest names one (a create fills in Hugging
Face's defaults: the huggingface engine, pytorch, x1). Both return at once: the endpoint then goes
pending → initializing → running, which `status()` reports (running with a URL is
Healthy; failed and updateFailed are Degraded; paused and scaledToZero Suspended).
Before updating or deleting, the endpoint's tags must name this environment and
deployment. Deleting an endpoint cannot be undone; the plan says so.

API: huggingface/huggingface_hub `hf_api.py` (create/get/update/delete/pause/resume
_inference_endpoint) and `_inference_endpoints.py`; base URL
https://api.endpoints.huggingface.cloud/v2; a bearer token (HF_TOKEN).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar
from urllib.parse import quote

from reconciler.instances import Instance, ProviderConfig, secret_ref
from reconciler.providers.base import (
    DeleteRule,
    HealthStatus,
    Invocation,
    InvokeTarget,
    LiveObject,
    Problem,
    Usage,
)
from reconciler.providers.invoke import (
    chat_completion,
    chat_messages,
    chat_options,
    count,
    prompt_text,
)
from reconciler.providers.vendor import (
    ABSENT,
    POLL_LATER,
    ClientOptions,
    ConfigReader,
    VendorProvider,
    bearer_options,
    get_path,
    overlay,
)
from reconciler.vocabulary import Health

BASE_URL = "https://api.endpoints.huggingface.cloud"
TAG_ENVIRONMENT = "reconciler-env:"
TAG_DEPLOYMENT = "reconciler-deployment:"
ENDPOINT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")
ENDPOINT_HINT = "1 to 32 lowercase letters, digits or '-', not starting or ending with '-'"
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.]|-(?!-)){0,95}"
REPOSITORY = re.compile(rf"(?:{_REPO_PART}/)?{_REPO_PART}")
REPOSITORY_HINT = "a Hub repository id such as meta-llama/Llama-3.1-8B-Instruct"
SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
INSTANCE_SIZE = re.compile(r"[0-9]*x[0-9]+")
NAMESPACE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?")
TYPES = ("public", "authenticated", "private")
#: status.state → health (the hub client's InferenceEndpointStatus).
HEALTH: dict[str, Health] = {
    "pending": "Progressing",
    "initializing": "Progressing",
    "updating": "Progressing",
    "running": "Healthy",
    "failed": "Degraded",
    "updateFailed": "Degraded",
    "paused": "Suspended",
    "scaledToZero": "Suspended",
}
#: huggingface.image.engine → the key of the API's `model.image` union.
ENGINES: Mapping[str, str] = {
    "huggingface": "huggingface",
    "tgi": "tgi",
    "tei": "tei",
    "vllm": "vllm",
    "sglang": "sglang",
    "llamacpp": "llamacpp",
    "custom": "custom",
}
DEFAULT_IMAGE: Mapping[str, Any] = {"huggingface": {}}
DEFAULT_FRAMEWORK = "pytorch"
DEFAULT_SIZE = "x1"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 4
_UNUSED = {
    "prompt": "an endpoint serves a model; a prompt belongs to the application (or a "
    "langfuse provider)",
    "options": "an endpoint takes sampling options per request, not per endpoint",
    "endpoint": "each Inference Endpoint has its own URL",
    "timeoutSeconds": "an Inference Endpoint has no request timeout setting",
}


@dataclass(frozen=True)
class Settings:
    base_url: str
    namespace: str
    vendor: str
    region: str
    type: str
    timeout: float
    retries: int
    token_env: str


def read_settings(r: ConfigReader) -> Settings:
    return Settings(
        base_url=r.url("baseUrl", BASE_URL),
        namespace=r.text(
            "namespace",
            pattern=NAMESPACE,
            hint="a Hugging Face user or organisation name",
            required="acme",
        ),
        vendor=r.text("vendor", "aws", pattern=SLUG, hint="e.g. aws, azure, gcp"),
        region=r.text("region", "us-east-1", pattern=SLUG, hint="e.g. us-east-1"),
        type=r.choice("type", "authenticated", TYPES),
        timeout=r.number("timeoutSeconds", DEFAULT_TIMEOUT),
        retries=r.integer("retries", DEFAULT_RETRIES),
        token_env=r.credential("tokenEnv", "HF_TOKEN"),
    )


def block(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    value = spec.get("huggingface")
    return value if isinstance(value, Mapping) else {}


def endpoint_name(name: str, spec: Mapping[str, Any]) -> str:
    return str(block(spec).get("endpointName") or name)


def accelerator(instance_type: str) -> str:
    if instance_type.startswith("nvidia-"):
        return "gpu"
    if instance_type.startswith(("inf2", "trn")) or "neuron" in instance_type:
        return "neuron"
    return "cpu"


def tags(name: str, environment: str) -> list[str]:
    return [f"{TAG_ENVIRONMENT}{environment}", f"{TAG_DEPLOYMENT}{name}"]


def image_of(b: Mapping[str, Any]) -> dict[str, Any] | None:
    """`model.image` for huggingface.image, or None when the manifest names none."""
    image = b.get("image")
    if not isinstance(image, Mapping) or image.get("engine") not in ENGINES:
        return None
    fields = {k: image[k] for k in ("url", "port", "healthRoute") if image.get(k) is not None}
    return {ENGINES[str(image["engine"])]: fields}


def measure_of(b: Mapping[str, Any]) -> dict[str, Any] | None:
    """`compute.scaling.measure` for huggingface.autoscaling, or None when not set."""
    auto = b.get("autoscaling")
    if not isinstance(auto, Mapping) or not auto.get("metric"):
        return None
    return {str(auto["metric"]): auto.get("threshold")}


def route_of(b: Mapping[str, Any]) -> dict[str, Any] | None:
    route = b.get("route")
    if not isinstance(route, Mapping):
        return None
    return {k: route[k] for k in ("domain", "path") if route.get(k) is not None} or None


@dataclass(frozen=True)
class Endpoint:
    """What one deployment's spec asks of Hugging Face (secret values not resolved):
    only the fields the manifest sets, so that an update never resets what it does
    not name. `defaults` fills in Hugging Face's defaults for a create."""

    name: str
    type: str
    vendor: str
    region: str
    compute: dict[str, Any]
    model: dict[str, Any]
    tags: list[str]
    enabled: bool
    route: dict[str, Any] | None = None
    suspended: bool = False

    @property
    def paused(self) -> bool:
        """Whether the endpoint should be paused: disabled, or suspended."""
        return self.suspended or not self.enabled

    def defaults(self) -> Endpoint:
        """The create payload's parts: the server needs an image, a framework and a size."""
        model = {"image": dict(DEFAULT_IMAGE), "framework": DEFAULT_FRAMEWORK, **self.model}
        compute = {"instanceSize": DEFAULT_SIZE, **self.compute}
        return replace(self, model=model, compute=compute)


def endpoint(name: str, environment: str, spec: Mapping[str, Any], settings: Settings) -> Endpoint:
    b = block(spec)
    scaling = spec.get("scaling") or {}
    hardware = str(scaling.get("hardware") or "")
    scale: dict[str, Any] = {
        "minReplica": scaling.get("minReplicas", 1),
        "maxReplica": scaling.get("maxReplicas", 1),
    }
    if b.get("scaleToZeroTimeout") is not None:
        scale["scaleToZeroTimeout"] = b["scaleToZeroTimeout"]
    if (measure := measure_of(b)) is not None:
        scale["measure"] = measure
    env = spec.get("env") or {}
    model: dict[str, Any] = {
        "repository": b.get("repository") or spec.get("model"),
        "env": {k: v for k, v in env.items() if secret_ref(v) is None},
        "secrets": {k: v for k, v in env.items() if secret_ref(v) is not None},
    }
    # Only what the manifest sets: the server refuses a null task, and a default sent
    # on every write would switch back an engine or framework picked in the UI.
    for key in ("framework", "revision", "task"):
        if b.get(key):
            model[key] = b[key]
    if (image := image_of(b)) is not None:
        model["image"] = image
    compute: dict[str, Any] = {
        "accelerator": accelerator(hardware),
        "instanceType": hardware,
        "scaling": scale,
    }
    if b.get("instanceSize"):
        compute["instanceSize"] = b["instanceSize"]
    return Endpoint(
        name=endpoint_name(name, spec),
        type=str(b.get("type") or settings.type),
        vendor=str(b.get("vendor") or settings.vendor),
        region=str(b.get("region") or settings.region),
        compute=compute,
        model=model,
        tags=tags(name, environment),
        enabled=spec.get("enabled", True) is not False,
        route=route_of(b),
        suspended=spec.get("suspended") is True,
    )


class HuggingFaceProvider(VendorProvider[Settings]):
    """Inference Endpoints in one namespace; config: namespace, vendor, region, type,
    baseUrl, timeoutSeconds, retries; credentials: tokenEnv."""

    type_name: ClassVar[str] = "huggingface"
    replace_fields: ClassVar[Mapping[str, str]] = {
        "huggingface.endpointName": "the name is the endpoint's address",
        "huggingface.vendor": "an endpoint stays with the cloud vendor it was made on",
        "huggingface.region": "an endpoint stays in the region it was made in",
        "huggingface.type": "the update API does not change an endpoint's type",
    }
    #: GPU endpoints commonly take 5 to 15 minutes to go from pending to running.
    readiness_timeout: ClassVar[float] = 1800.0
    poll_interval: ClassVar[float] = 15.0

    @classmethod
    def config_keys(cls) -> frozenset[str]:
        return frozenset(
            {"baseUrl", "namespace", "vendor", "region", "type", "timeoutSeconds", "retries"}
        )

    @classmethod
    def credential_keys(cls) -> frozenset[str]:
        return frozenset({"tokenEnv"})

    def read_settings(self, reader: ConfigReader) -> Settings:
        return read_settings(reader)

    def client_options(self) -> ClientOptions:
        return bearer_options(self, self.settings, "a Hugging Face token with write access", "/v2")

    # -- plan time ---------------------------------------------------------------------------

    @classmethod
    def delete_rule(
        cls, config: ProviderConfig, kind: str, name: str, body: Mapping[str, Any]
    ) -> DeleteRule:
        return DeleteRule(
            note=f"deletes Inference Endpoint {endpoint_name(name, body)!r} for good, URL "
            "included (enabled: false pauses it instead)"
        )

    def identity(self, inst: Instance) -> str | None:
        if inst.kind != "Deployment":
            return None
        s = self.settings
        return f"{s.base_url}/v2/endpoint/{s.namespace}/{endpoint_name(inst.name, inst.spec)}"

    def validate(self, inst: Instance) -> list[str | Problem]:
        problems = self.deployment_problems(inst, _UNUSED)
        if inst.kind != "Deployment":
            return problems
        label = f"provider {self.name!r} (huggingface)"
        spec, b = inst.spec, block(inst.spec)
        repo_at = ("huggingface", "repository") if b.get("repository") else ("model",)
        repo = str(b.get("repository") or spec.get("model") or "")
        if not REPOSITORY.fullmatch(repo) or "--" in repo or ".." in repo:
            problems.append(
                Problem(
                    f"{repo!r} is not a Hub repository: {REPOSITORY_HINT} "
                    "(set huggingface.repository)",
                    repo_at,
                )
            )
        name = endpoint_name(inst.name, spec)
        if not ENDPOINT_NAME.fullmatch(name):
            at = ("huggingface", "endpointName") if b.get("endpointName") else ("huggingface",)
            hint = "" if b.get("endpointName") else " (set huggingface.endpointName)"
            problems.append(Problem(f"{name!r} is not an endpoint name: {ENDPOINT_HINT}{hint}", at))
        problems.extend(self._check_compute(spec, b, label))
        image = b.get("image")
        if isinstance(image, Mapping):
            if image.get("engine") == "custom" and not image.get("url"):
                problems.append(
                    Problem(
                        "huggingface.image.engine custom needs image.url, the container image",
                        ("huggingface", "image"),
                    )
                )
            for key in ("port", "healthRoute"):
                if image.get(key) is not None and image.get("engine") != "custom":
                    problems.append(
                        Problem(
                            f"huggingface.image.{key} is for a custom container (engine: "
                            "custom); Hugging Face's engines set their own",
                            ("huggingface", "image", key),
                        )
                    )
        route = b.get("route")
        path = route.get("path") if isinstance(route, Mapping) else None
        if path is not None and not str(path).startswith("/"):
            problems.append(
                Problem(
                    f"huggingface.route.path {path!r} must start with '/'",
                    ("huggingface", "route", "path"),
                )
            )
        for key in ("vendor", "region", "task", "framework"):
            value = b.get(key)
            if value is not None and not SLUG.fullmatch(str(value)):
                problems.append(
                    Problem(
                        f"huggingface.{key} {value!r} is not valid: lowercase letters, "
                        "digits and single '-'",
                        ("huggingface", key),
                    )
                )
        return problems

    @staticmethod
    def _check_compute(
        spec: Mapping[str, Any], b: Mapping[str, Any], label: str
    ) -> list[str | Problem]:
        out: list[str | Problem] = []
        scaling = spec.get("scaling")
        hardware = scaling.get("hardware") if isinstance(scaling, Mapping) else None
        if not hardware:
            out.append(
                Problem(
                    f"{label} needs scaling.hardware, the instance type (e.g. nvidia-a10g, "
                    "intel-icl)",
                    ("scaling", "hardware"),
                )
            )
        elif not SLUG.fullmatch(str(hardware)):
            out.append(
                Problem(
                    f"scaling.hardware {hardware!r} is not an instance type such as nvidia-a10g",
                    ("scaling", "hardware"),
                )
            )
        size = b.get("instanceSize")
        if size is not None and not INSTANCE_SIZE.fullmatch(str(size)):
            out.append(
                Problem(
                    f"huggingface.instanceSize {size!r} is not a size such as x1 or x4",
                    ("huggingface", "instanceSize"),
                )
            )
        minimum = scaling.get("minReplicas", 1) if isinstance(scaling, Mapping) else 1
        timeout = b.get("scaleToZeroTimeout")
        if timeout is not None and minimum != 0:
            out.append(
                Problem(
                    "huggingface.scaleToZeroTimeout needs scaling.minReplicas: 0 (scaling to "
                    "zero is what it times)",
                    ("huggingface", "scaleToZeroTimeout"),
                )
            )
        if minimum == 0 and timeout is None:
            out.append(
                Problem(
                    "scaling.minReplicas: 0 scales the endpoint to zero: say after how many "
                    "idle minutes with huggingface.scaleToZeroTimeout",
                    ("scaling", "minReplicas"),
                )
            )
        return out

    # -- the API -------------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return f"endpoint/{quote(self.settings.namespace, safe='')}/{quote(name, safe='')}"

    def _get(self, name: str, *, polling: bool = False) -> dict[str, Any] | None:
        """The endpoint, or None; `polling` (a health poll) hands a 429/503 back to
        apply as RetryAfter instead of waiting for it here."""
        client = self.http()
        resp = client.request(
            "GET", self._path(name), ok=(200, 404, *POLL_LATER) if polling else (200, 404)
        )
        if polling:
            self.poll_later(resp)
        return None if resp.status_code == 404 else client.json_object(resp)

    def _check_owner(self, live: Mapping[str, Any], name: str, environment: str) -> None:
        have = [t for t in live.get("tags") or [] if isinstance(t, str)]
        if set(tags(name, environment)) <= set(have):
            return
        where = f"Inference Endpoint {live.get('name')!r} in {self.settings.namespace!r}"
        mine = [t for t in have if t.startswith((TAG_ENVIRONMENT, TAG_DEPLOYMENT))]
        if not mine:
            raise self.error(
                f"deployment.{name}",
                f"{where} exists and was not made by reconciler (no {TAG_ENVIRONMENT}… tags); "
                "nothing was changed. Give this deployment another huggingface.endpointName, "
                f"or add the tags {', '.join(tags(name, environment))} to adopt it",
            )
        raise self.error(
            f"deployment.{name}",
            f"{where} carries {', '.join(sorted(mine))}: it is not deployment.{name} in "
            f"{environment!r}; nothing was changed",
        )

    def _secrets(self, inst: Instance, e: Endpoint) -> dict[str, Any]:
        """The model part with secret values resolved (registered for redaction)."""
        resolved = self.resolved(inst)
        env = resolved.get("env") or {}
        return {**e.model, "secrets": {k: env[k] for k in e.model["secrets"]}}

    def _power(self, e: Endpoint, live: Mapping[str, Any]) -> None:
        """Pause or resume so that the endpoint's state matches `enabled` and
        `suspended`. Pausing, not scale-to-zero: a paused endpoint stays paused (and
        costs nothing) until resumed, where one scaled to zero wakes at its next
        request (the Inference Endpoints docs, "pause" and "scale to zero"). A resume
        of a running endpoint answers 400 "already running", which is done."""
        state = get_path(live, "status.state")
        client = self.http()
        if e.paused and state != "paused":
            client.request("POST", f"{self._path(e.name)}/pause")
        elif not e.paused and state == "paused":
            resp = client.request("POST", f"{self._path(e.name)}/resume", ok=(200, 400))
            if resp.status_code == 400 and "already running" not in resp.text.lower():
                raise self.error(f"POST {self._path(e.name)}/resume", f"400: {resp.text[:200]}")

    def _write(self, inst: Instance, live: Mapping[str, Any] | None) -> str:
        e = endpoint(inst.name, inst.environment, inst.spec, self.settings)
        client = self.http()
        if live is None:
            e = e.defaults()
            model = self._secrets(inst, e)
            body: dict[str, Any] = {
                "name": e.name,
                "type": e.type,
                "provider": {"vendor": e.vendor, "region": e.region},
                "compute": e.compute,
                "model": model,
                "tags": e.tags,
            }
            if e.route is not None:
                body["route"] = e.route
            # Not retried once sent (it may have been made): the next run's GET finds it.
            resp = client.request(
                "POST",
                f"endpoint/{quote(self.settings.namespace, safe='')}",
                json=body,
                ok=(200, 201, 202, 409),
            )
            if resp.status_code == 409:  # made meanwhile (a lost answer): adopt if ours
                return self._write(inst, self._require(inst, e.name))
            written = client.json_object(resp)
        else:
            self._check_owner(live, inst.name, inst.environment)
            model = self._secrets(inst, e)
            body = {"compute": e.compute, "model": model, "tags": e.tags}
            if e.route is not None:
                body["route"] = e.route
            written = client.json_object(client.request("PUT", self._path(e.name), json=body))
        self._power(e, written)
        return f"{self.settings.namespace}/{e.name}"

    def _require(self, inst: Instance, name: str) -> dict[str, Any]:
        live = self._get(name)
        if live is None:
            raise self.error(
                inst.key.address,
                f"Inference Endpoint {name!r} was reported to exist and cannot be found",
            )
        return live

    def _name(self, name: str, provider_id: str | None) -> str:
        """The endpoint's name: the recorded id's, else the deployment's."""
        if provider_id and "/" in provider_id:
            return provider_id.rsplit("/", 1)[1]
        return name

    # -- the contract --------------------------------------------------------------------------

    # -- running a deployment --------------------------------------------------------------

    can_invoke: ClassVar[bool] = True
    #: `suspended: true` pauses the endpoint (`POST .../pause`); lifting it resumes it.
    suspend_refusal: ClassVar[str | None] = None

    def invoke(self, target: InvokeTarget, input: Mapping[str, Any], deadline: float) -> Invocation:
        """The endpoint's own URL (`status.url`, read from the API first: it must be this
        deployment's and running). An input with chat `messages` goes to TGI's
        OpenAI-compatible `POST {url}/v1/chat/completions` (usage from its `usage`);
        anything else to `POST {url}` as `{"inputs": prompt, "parameters": {...,
        "details": true}}` (the generated tokens from `details`; the prompt's are not
        reported). Sent once."""
        where = f"deployment.{target.name}"
        live = self._get(self._name(target.name, target.provider_id))
        if live is None:
            raise self.error(where, "the endpoint does not exist (removed outside reconciler)")
        self._check_owner(live, target.name, target.environment)
        state, url = get_path(live, "status.state"), get_path(live, "status.url")
        if state != "running" or not isinstance(url, str) or not url:
            raise self.error(
                where, f"the endpoint is {state or 'not running'}: it answers only when running"
            )
        client = self.http()
        options = chat_options(target.spec)
        started = time.monotonic()
        if isinstance(input.get("messages"), list):
            body = {"model": "tgi", "messages": chat_messages(target.spec, input), **options}
            return chat_completion(client, url.rstrip("/") + "/v1/chat/completions", body)
        parameters: dict[str, Any] = {"details": True, "return_full_text": False}
        renames = {"max_tokens": "max_new_tokens"}
        parameters.update(
            {
                renames.get(k, k): v
                for k, v in options.items()
                if k in ("temperature", "top_p", "max_tokens", "stop", "seed")
            }
        )
        body = {"inputs": prompt_text(target.spec, input), "parameters": parameters}
        resp = client.request("POST", url, json=body, ok=(200,), idempotent=False)
        latency = time.monotonic() - started
        answer = client.json(resp)
        first = answer[0] if isinstance(answer, list) and answer else answer
        if not isinstance(first, Mapping) or "generated_text" not in first:
            raise client.invalid(resp, "200 answer has no generated_text")
        details = first.get("details")
        generated = count(details.get("generated_tokens")) if isinstance(details, Mapping) else None
        return Invocation(first["generated_text"], Usage(None, generated), latency)

    def read(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> LiveObject | None:
        ep = self._name(name, provider_id)
        live = self._get(ep)
        return None if live is None else LiveObject(f"{self.settings.namespace}/{ep}", live)

    def status(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> HealthStatus:
        live = self._get(self._name(name, provider_id), polling=True)
        if live is None:
            return HealthStatus("Missing", "no such Inference Endpoint")
        state = str(get_path(live, "status.state") or "")
        message = str(get_path(live, "status.message") or state or "no state")
        if state == "running" and not get_path(live, "status.url"):
            return HealthStatus("Progressing", f"running, no URL yet: {message}")
        return HealthStatus(HEALTH.get(state, "Progressing"), message)

    def create(self, inst: Instance) -> str:
        return self._write(inst, self._get(endpoint_name(inst.name, inst.spec)))

    def update(self, inst: Instance, provider_id: str) -> None:
        name = endpoint_name(inst.name, inst.spec)
        if provider_id != f"{self.settings.namespace}/{name}":
            raise self.error(
                inst.key.address,
                f"recorded as {provider_id}, but the manifests now say "
                f"{self.settings.namespace}/{name}; that is a replace, which `reconciler plan` "
                "shows: re-plan",
            )
        live = self._get(name)
        if live is None:
            raise self.error(
                inst.key.address,
                f"Inference Endpoint {name!r} no longer exists (removed outside reconciler); "
                "`reconciler drift --heal` recreates it",
            )
        self._write(inst, live)

    def delete(self, kind: str, name: str, environment: str, provider_id: str | None) -> None:
        ep = self._name(name, provider_id)
        live = self._get(ep)
        if live is None:
            return
        self._check_owner(live, name, environment)
        self.http().request("DELETE", self._path(ep), ok=(200, 202, 204, 404))

    def live_body(self, live: LiveObject, recorded: Mapping[str, Any]) -> dict[str, Any]:
        want = endpoint(
            str(recorded.get("name")), str(recorded.get("environment")), recorded, self.settings
        )
        have = live.body
        b = block(recorded)
        repo_path = "huggingface.repository" if b.get("repository") else "model"
        fields: list[tuple[str, Any, Any]] = [
            (repo_path, want.model["repository"], get_path(have, "model.repository")),
            (
                "scaling.hardware",
                want.compute["instanceType"],
                get_path(have, "compute.instanceType"),
            ),
            (
                "scaling.minReplicas",
                want.compute["scaling"]["minReplica"],
                get_path(have, "compute.scaling.minReplica"),
            ),
            (
                "scaling.maxReplicas",
                want.compute["scaling"]["maxReplica"],
                get_path(have, "compute.scaling.maxReplica"),
            ),
            ("huggingface.vendor", want.vendor, get_path(have, "provider.vendor")),
            ("huggingface.region", want.region, get_path(have, "provider.region")),
            ("huggingface.type", want.type, have.get("type")),
        ]
        paused = get_path(have, "status.state") == "paused"
        if want.suspended:
            # Resumed by hand (in the UI, say) reads as drift: suspended true -> false.
            fields.append(("suspended", True, paused))
        else:
            fields.append(("enabled", want.enabled, not paused))
        # Left out of the manifests, Hugging Face (or someone in its UI) picks these: only
        # set ones drift, since only set ones are written.
        for key, path in (
            ("framework", "model.framework"),
            ("instanceSize", "compute.instanceSize"),
            ("revision", "model.revision"),
            ("task", "model.task"),
            ("scaleToZeroTimeout", "compute.scaling.scaleToZeroTimeout"),
        ):
            if b.get(key) is not None:
                fields.append((f"huggingface.{key}", b[key], get_path(have, path)))
        if "image" in want.model:
            fields.append(("huggingface.image", b.get("image"), _image_back(have, b.get("image"))))
        if "measure" in want.compute["scaling"]:
            fields.append(
                (
                    "huggingface.autoscaling",
                    b.get("autoscaling"),
                    _measure_back(get_path(have, "compute.scaling.measure"), b.get("autoscaling")),
                )
            )
        if want.route is not None:
            raw = have.get("route")
            live_route: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
            fields += [
                (f"huggingface.route.{k}", v, live_route.get(k, ABSENT))
                for k, v in want.route.items()
            ]
        fields += _env_fields(recorded.get("env") or {}, have)
        return overlay(recorded, fields)


def _image_back(have: Mapping[str, Any], wanted: Any) -> Any:
    """The live `model.image` in the manifest's shape ({engine, url, ...}), or the
    wanted value itself when they say the same."""
    image = get_path(have, "model.image")
    if not isinstance(image, Mapping) or len(image) != 1:
        return image
    ((key, fields),) = image.items()
    engine = next((e for e, k in ENGINES.items() if k == key), key)
    out: dict[str, Any] = {"engine": engine}
    if isinstance(fields, Mapping):
        out.update({k: fields[k] for k in ("url", "port", "healthRoute") if k in fields})
    return wanted if out == wanted else out


def _measure_back(measure: Any, wanted: Any) -> Any:
    if not isinstance(measure, Mapping) or len(measure) != 1:
        return measure
    ((metric, threshold),) = measure.items()
    out = {"metric": metric, "threshold": threshold}
    return wanted if out == wanted else out


def _env_fields(env: Mapping[str, Any], have: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Plain variables by value; secrets by presence only (their values are not shown)."""
    live_env = get_path(have, "model.env") or {}
    live_secrets = get_path(have, "model.secrets") or {}
    out: list[tuple[str, Any, Any]] = []
    for var, value in env.items():
        if secret_ref(value) is not None:
            present = var in live_secrets
            out.append((f"env.{var}", True, present if present else ABSENT))
        else:
            out.append((f"env.{var}", value, live_env.get(var, ABSENT)))
    out += [(f"env.{v}", ABSENT, x) for v, x in live_env.items() if v not in env]
    return out
