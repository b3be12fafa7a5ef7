"""Replicate deployments.

What maps to what (README "Replicate deployments", docs/providers.md):

    deployment       /v1/deployments/{config.owner}/{replicate.deploymentName, else the
                     deployment's name}; the provider id is `owner/name`
    model            current_release.model (`owner/name`): fixed for life, a change is a
                     replacement
    replicate.version current_release.version (a 64-character version id)
    scaling          hardware: scaling.hardware; min_instances, max_instances:
                     scaling.minReplicas, maxReplicas (0-5 and 1-20)
    enabled: false   min_instances and max_instances 0: offline (Suspended)
    suspended: true  the same ("To temporarily disable a deployment, you can set the
                     minimum and maximum instances ... to zero", Replicate's docs, "View
                     deployments"); lifted, the manifest's instances again

Running a deployment (`reconciler run`) is a prediction on it: `POST /v1/deployments/
{owner}/{name}/predictions` with `{"input": <the run's input>}` and `Prefer:
wait=<n>` (deployments.predictions.create: the request is held up to n seconds, 1-60;
201 with the output when the model finished, else the prediction in `starting` or
`processing`), then `GET urls.get` until a terminal status (succeeded, failed,
canceled, aborted: the prediction lifecycle docs) within the run's deadline; past it
the prediction is cancelled (`POST urls.cancel`) and the run fails. The output is the
model's own (a language model's is a list of text pieces, an image model's a list of
URLs); usage is `metrics.input_token_count` and `output_token_count` where the model
reports them (Replicate's language models do), else unknown.

Creating is GET then POST when absent (the name is the address; a POST whose answer
was lost is found by the next GET). Updating is one PATCH of the fields that differ:
each PATCH makes a new release, so an unchanged deployment is never written.
Replicate applies a configuration at once and reports no readiness, so a deployment is
Healthy when it exists with instances allowed, and ready when its write returns.

Replicate keeps no tags or labels on a deployment. Ownership: a deployment found by
name when none is recorded (create) is adopted only when its current release runs the
manifest's model and was made by the account the token belongs to (`GET /v1/account`);
updates and deletes go to the `owner/name` recorded in state, and an update refuses a
deployment that runs another model.

Deleting: Replicate deletes only a deployment that has been offline and unused for 15
minutes. Delete scales it to 0 instances, then asks again every poll interval until
Replicate agrees or config.deleteTimeoutSeconds (default 20 minutes) passes; after
that the delete fails with Replicate's words, the record stays, and the next apply
asks again.

API: the Replicate HTTP API's OpenAPI description (deployments.create/get/update/
delete, account.get); base URL https://api.replicate.com/v1; a bearer token
(REPLICATE_API_TOKEN).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from reconciler.errors import ProviderError
from reconciler.instances import Instance, ProviderConfig
from reconciler.log import get_logger
from reconciler.providers.base import (
    DeleteRule,
    HealthStatus,
    Invocation,
    InvokeTarget,
    LiveObject,
    Problem,
    Usage,
)
from reconciler.providers.invoke import count
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

_log = get_logger("reconciler.providers.replicate")

BASE_URL = "https://api.replicate.com"
_PART = r"[a-z0-9](?:[a-z0-9._-]{0,98}[a-z0-9])?"
OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,38}[A-Za-z0-9])?")
NAME = re.compile(_PART)
NAME_HINT = "lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit"
MODEL = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]*/{_PART}")
VERSION = re.compile(r"[0-9a-f]{64}")
HARDWARE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
#: Replicate's bounds on a deployment's instances (the OpenAPI description).
MAX_MIN_INSTANCES = 5
MAX_MAX_INSTANCES = 20
#: Answers to DELETE that mean "not yet": the deployment has not been offline for 15
#: minutes. Which status Replicate uses is not documented; each is asked again.
NOT_YET = (400, 409, 422)
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 4
DEFAULT_DELETE_TIMEOUT = 1200.0
#: A prediction's statuses that end it (the prediction lifecycle docs).
FINISHED = ("succeeded", "failed", "canceled", "aborted")
#: The longest `Prefer: wait=n` Replicate takes (the OpenAPI's prefer_header: 1-60).
MAX_PREFER_WAIT = 60
#: Seconds between polls of a prediction still running (replicate-python's default
#: poll interval); config.pollIntervalSeconds lowers it.
PREDICTION_POLL = 0.5
_UNUSED = {
    "prompt": "a deployment serves a model version; a prompt belongs to the application",
    "options": "Replicate takes a model's inputs per prediction, not per deployment",
    "endpoint": "each deployment has its own predictions URL",
    "env": "a Replicate deployment runs its model version's container as built; it takes "
    "no environment variables",
    "timeoutSeconds": "a Replicate deployment has no request timeout setting",
}


def health(configuration: Mapping[str, Any] | None) -> HealthStatus:
    """A deployment's health from its current release's configuration: Replicate
    reports no readiness, so one that may run instances is Healthy and one held at 0
    instances is Suspended (offline on purpose)."""
    if configuration is None:
        return HealthStatus("Missing", "no such deployment")
    top = configuration.get("max_instances")
    state: Health = "Suspended" if top == 0 else "Healthy"
    hw = configuration.get("hardware")
    return HealthStatus(
        state,
        f"offline: 0 instances on {hw}"
        if top == 0
        else f"{configuration.get('min_instances')}-{top} instances on {hw}",
    )


@dataclass(frozen=True)
class Settings:
    base_url: str
    owner: str
    timeout: float
    retries: int
    delete_timeout: float
    token_env: str


def read_settings(r: ConfigReader) -> Settings:
    return Settings(
        base_url=r.url("baseUrl", BASE_URL),
        owner=r.text(
            "owner",
            pattern=OWNER,
            hint="a Replicate user or organisation name",
            required="acme",
        ),
        timeout=r.number("timeoutSeconds", DEFAULT_TIMEOUT),
        retries=r.integer("retries", DEFAULT_RETRIES),
        delete_timeout=r.number("deleteTimeoutSeconds", DEFAULT_DELETE_TIMEOUT),
        token_env=r.credential("tokenEnv", "REPLICATE_API_TOKEN"),
    )


def block(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    value = spec.get("replicate")
    return value if isinstance(value, Mapping) else {}


def deployment_name(name: str, spec: Mapping[str, Any]) -> str:
    return str(block(spec).get("deploymentName") or name)


@dataclass(frozen=True)
class Wanted:
    """What one deployment's spec asks of Replicate."""

    name: str
    model: str
    version: str
    hardware: str
    min_instances: int
    max_instances: int

    def configuration(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "hardware": self.hardware,
            "min_instances": self.min_instances,
            "max_instances": self.max_instances,
        }


def wanted(name: str, spec: Mapping[str, Any]) -> Wanted:
    scaling = spec.get("scaling") or {}
    on = spec.get("enabled", True) is not False and spec.get("suspended") is not True
    return Wanted(
        name=deployment_name(name, spec),
        model=str(spec.get("model") or ""),
        version=str(block(spec).get("version") or ""),
        hardware=str(scaling.get("hardware") or ""),
        min_instances=int(scaling.get("minReplicas", 1)) if on else 0,
        max_instances=int(scaling.get("maxReplicas", 1)) if on else 0,
    )


def live_configuration(live: Mapping[str, Any]) -> dict[str, Any]:
    """The current release as the fields a PATCH takes."""
    release = live.get("current_release") or {}
    config = release.get("configuration") or {}
    return {
        "version": release.get("version"),
        "hardware": config.get("hardware"),
        "min_instances": config.get("min_instances"),
        "max_instances": config.get("max_instances"),
    }


class ReplicateProvider(VendorProvider[Settings]):
    """Deployments under one Replicate owner; config: owner, baseUrl, timeoutSeconds,
    retries, deleteTimeoutSeconds; credentials: tokenEnv."""

    type_name: ClassVar[str] = "replicate"
    replace_fields: ClassVar[Mapping[str, str]] = {
        "model": "a Replicate deployment keeps its model for life (only replicate.version "
        "changes in place)",
        "replicate.deploymentName": "the name is the deployment's address",
    }
    #: Replicate applies a configuration when the PATCH returns; it reports no readiness.
    readiness_timeout: ClassVar[float] = 0.0
    #: Between the asks of a slow delete.
    poll_interval: ClassVar[float] = 30.0
    #: `suspended: true` holds the deployment at 0 instances, as Replicate's docs say
    #: to disable one; lifting it sets the manifest's instances again.
    suspend_refusal: ClassVar[str | None] = None
    can_invoke: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._account: str | None = None

    @classmethod
    def config_keys(cls) -> frozenset[str]:
        return frozenset({"baseUrl", "owner", "timeoutSeconds", "retries", "deleteTimeoutSeconds"})

    @classmethod
    def credential_keys(cls) -> frozenset[str]:
        return frozenset({"tokenEnv"})

    def read_settings(self, reader: ConfigReader) -> Settings:
        return read_settings(reader)

    def client_options(self) -> ClientOptions:
        return bearer_options(self, self.settings, "a Replicate API token", "/v1")

    # -- plan time ---------------------------------------------------------------------------

    @classmethod
    def delete_rule(
        cls, config: ProviderConfig, kind: str, name: str, body: Mapping[str, Any]
    ) -> DeleteRule:
        return DeleteRule(
            note=f"deletes Replicate deployment {deployment_name(name, body)!r} for good: "
            "it is scaled to 0 instances first, and Replicate deletes it only after 15 "
            "minutes offline and unused (apply waits up to config.deleteTimeoutSeconds)"
        )

    def identity(self, inst: Instance) -> str | None:
        if inst.kind != "Deployment":
            return None
        s = self.settings
        return f"{s.base_url}/v1/deployments/{s.owner}/{deployment_name(inst.name, inst.spec)}"

    def validate(self, inst: Instance) -> list[str | Problem]:
        problems = self.deployment_problems(inst, _UNUSED)
        if inst.kind != "Deployment":
            return problems
        label = f"provider {self.name!r} (replicate)"
        spec, b = inst.spec, block(inst.spec)
        model = str(spec.get("model") or "")
        if not MODEL.fullmatch(model):
            problems.append(
                Problem(
                    f"{model!r} is not a Replicate model: owner/name, e.g. stability-ai/sdxl "
                    "(the version goes in replicate.version)",
                    ("model",),
                )
            )
        version = b.get("version")
        if version is None:
            problems.append(
                Problem(
                    f"{label} needs replicate.version, the 64-character id of the model "
                    "version to run",
                    ("replicate",) if b else ("model",),
                )
            )
        elif not VERSION.fullmatch(str(version)):
            problems.append(
                Problem(
                    f"replicate.version {version!r} is not a version id (64 hexadecimal "
                    "characters)",
                    ("replicate", "version"),
                )
            )
        name = deployment_name(inst.name, spec)
        if not NAME.fullmatch(name):
            at = ("replicate", "deploymentName") if b.get("deploymentName") else ("replicate",)
            hint = "" if b.get("deploymentName") else " (set replicate.deploymentName)"
            problems.append(Problem(f"{name!r} is not a deployment name: {NAME_HINT}{hint}", at))
        problems.extend(_check_scaling(spec, label))
        return problems

    # -- the API -------------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return f"deployments/{quote(self.settings.owner, safe='')}/{quote(name, safe='')}"

    def _id(self, name: str) -> str:
        return f"{self.settings.owner}/{name}"

    def _name(self, name: str, provider_id: str | None) -> str:
        """The deployment's name: the recorded id's, else the deployment's."""
        if provider_id and "/" in provider_id:
            return provider_id.rsplit("/", 1)[1]
        return name

    def _get(self, name: str, *, polling: bool = False) -> dict[str, Any] | None:
        client = self.http()
        resp = client.request(
            "GET", self._path(name), ok=(200, 404, *POLL_LATER) if polling else (200, 404)
        )
        if polling:
            self.poll_later(resp)
        return None if resp.status_code == 404 else client.json_object(resp)

    def _whoami(self) -> str:
        """The account the token belongs to (asked once)."""
        if self._account is None:
            client = self.http()
            self._account = str(
                client.json_object(client.request("GET", "account")).get("username")
            )
        return self._account

    def _check_adoptable(self, live: Mapping[str, Any], w: Wanted, address: str) -> None:
        """A deployment found by name with nothing recorded is adopted only when it runs
        the manifest's model and its current release was made with this token's account."""
        release = live.get("current_release") or {}
        where = f"Replicate deployment {self._id(w.name)}"
        if release.get("model") != w.model:
            raise self.error(
                address,
                f"{where} exists and runs {release.get('model')!r}, not {w.model!r}: it is not "
                "this deployment's; nothing was changed. Give this deployment another "
                "replicate.deploymentName",
            )
        made_by = get_path(release, "created_by.username")
        if made_by != self._whoami():
            raise self.error(
                address,
                f"{where} exists and its current release was made by {made_by!r}, not by "
                f"this token's account {self._whoami()!r}: reconciler did not make it; nothing "
                "was changed. Give this deployment another replicate.deploymentName",
            )

    def _patch(self, w: Wanted, live: Mapping[str, Any]) -> None:
        """One PATCH with the fields that differ (each PATCH is a new release)."""
        have = live_configuration(live)
        changes = {k: v for k, v in w.configuration().items() if have.get(k) != v}
        if changes:
            self.http().request("PATCH", self._path(w.name), json=changes)

    # -- the contract --------------------------------------------------------------------------

    def read(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> LiveObject | None:
        dep = self._name(name, provider_id)
        live = self._get(dep)
        return None if live is None else LiveObject(self._id(dep), live)

    def status(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> HealthStatus:
        live = self._get(self._name(name, provider_id), polling=True)
        if live is None:
            return health(None)
        return health(get_path(live, "current_release.configuration") or {})

    def create(self, inst: Instance) -> str:
        w = wanted(inst.name, inst.spec)
        live = self._get(w.name)
        if live is None:
            body = {"name": w.name, "model": w.model, **w.configuration()}
            # Not retried once sent (it may have been made): the next GET finds it.
            client = self.http()
            resp = client.request("POST", "deployments", json=body, ok=(200, 201, 409))
            if resp.status_code != 409:
                owner = client.json_object(resp).get("owner")
                if owner != self.settings.owner:
                    raise self.error(
                        inst.key.address,
                        f"Replicate made the deployment under {owner!r}, the token's account, "
                        f"not config.owner {self.settings.owner!r}: use a token of "
                        f"{self.settings.owner!r}",
                    )
                return self._id(w.name)
            live = self._get(w.name)  # made meanwhile (a lost answer): adopt if ours
            if live is None:
                raise self.error(
                    inst.key.address,
                    f"Replicate said deployment {self._id(w.name)} exists and it cannot be found",
                )
        self._check_adoptable(live, w, inst.key.address)
        self._patch(w, live)
        return self._id(w.name)

    def update(self, inst: Instance, provider_id: str) -> None:
        w = wanted(inst.name, inst.spec)
        if provider_id != self._id(w.name):
            raise self.error(
                inst.key.address,
                f"recorded as {provider_id}, but the manifests now say {self._id(w.name)}; "
                "that is a replace, which `reconciler plan` shows: re-plan",
            )
        live = self._get(w.name)
        if live is None:
            raise self.error(
                inst.key.address,
                f"Replicate deployment {provider_id} no longer exists (removed outside "
                "reconciler); `reconciler drift --heal` recreates it",
            )
        model = get_path(live, "current_release.model")
        if model != w.model:
            raise self.error(
                inst.key.address,
                f"Replicate deployment {provider_id} runs {model!r}, not {w.model!r}; a model "
                "change is a replace, which `reconciler plan` shows: re-plan",
            )
        self._patch(w, live)

    def delete(self, kind: str, name: str, environment: str, provider_id: str | None) -> None:
        dep = self._name(name, provider_id)
        what = f"deployment.{name}"
        live = self._get(dep)
        if live is None:
            return
        if provider_id != self._id(dep):
            raise self.error(
                what,
                f"Replicate deployment {self._id(dep)} is not the one recorded "
                f"({provider_id or 'none'}); nothing was deleted",
            )
        client = self.http()
        have = live_configuration(live)
        if have["min_instances"] != 0 or have["max_instances"] != 0:
            client.request("PATCH", self._path(dep), json={"min_instances": 0, "max_instances": 0})
        interval, limit, waited = self._poll_interval, self.settings.delete_timeout, 0.0
        while True:
            resp = client.request("DELETE", self._path(dep), ok=(200, 202, 204, 404, *NOT_YET))
            if resp.status_code not in NOT_YET:
                return
            why = _words(resp)
            if waited + interval > limit:
                raise self.error(
                    what,
                    f"Replicate has not deleted {self._id(dep)} after {waited:g} s at 0 "
                    f"instances (config.deleteTimeoutSeconds {limit:g}): {why}. It stays at 0 "
                    "instances; apply again to go on",
                )
            _log.info(
                "replicate.delete.wait",
                provider=self.name,
                deployment=self._id(dep),
                wait=interval,
                reason=why,
            )
            self.sleep(interval)
            waited += interval

    def live_body(self, live: LiveObject, recorded: Mapping[str, Any]) -> dict[str, Any]:
        w = wanted(str(recorded.get("name")), recorded)
        have = live_configuration(live.body)
        suspended = recorded.get("suspended") is True
        on = recorded.get("enabled", True) is not False and not suspended
        fields: list[tuple[str, Any, Any]] = [
            ("model", w.model, get_path(live.body, "current_release.model")),
            ("replicate.version", w.version, have["version"]),
            ("scaling.hardware", w.hardware, have["hardware"]),
        ]
        if on:
            fields += [
                ("scaling.minReplicas", w.min_instances, have["min_instances"]),
                ("scaling.maxReplicas", w.max_instances, have["max_instances"]),
            ]
        if suspended:
            # Instances allowed again by hand (in the web UI) read as suspended: false.
            fields.append(("suspended", True, have["max_instances"] == 0))
        else:
            # Disabled is 0/0; instances allowed again reads as enabled.
            fields.append(("enabled", on, have["max_instances"] != 0))
        return overlay(recorded, fields)

    # -- running a deployment --------------------------------------------------------------

    def invoke(self, target: InvokeTarget, input: Mapping[str, Any], deadline: float) -> Invocation:
        """A prediction on the deployment (deployments.predictions.create), its input the
        run's input as is (a model's inputs are its own: `prompt`, say). Sent once with
        `Prefer: wait=<n>`, n under the request deadline (config.timeoutSeconds) and at
        most 60; a prediction not finished then is polled (`GET urls.get`, on the API's
        own host only) until it ends or `deadline` passes, when it is cancelled (`POST
        urls.cancel`) and the run fails. Failed, canceled and aborted predictions are
        failed runs with Replicate's `error`."""
        dep = self._name(target.name, target.provider_id)
        where = f"deployment.{target.name}"
        live = self._get(dep)
        if live is None:
            raise self.error(
                where,
                f"Replicate deployment {self._id(dep)} does not exist (removed outside reconciler)",
            )
        model, want = get_path(live, "current_release.model"), target.spec.get("model")
        if model != want:
            raise self.error(
                where,
                f"Replicate deployment {self._id(dep)} runs {model!r}, not {want!r}: it is not "
                "this deployment's; nothing was sent",
            )
        if live_configuration(live)["max_instances"] == 0:
            raise self.error(
                where,
                f"Replicate deployment {self._id(dep)} is offline (0 instances): it runs no "
                "predictions",
            )
        client = self.http()
        wait = max(1, min(MAX_PREFER_WAIT, int(min(self.settings.timeout, deadline)) - 1))
        started, begun = time.monotonic(), self.clock()
        resp = client.request(
            "POST",
            f"{self._path(dep)}/predictions",
            json={"input": dict(input)},
            headers={"Prefer": f"wait={wait}"},
            ok=(200, 201, 202),
            idempotent=False,
        )
        prediction = client.json_object(resp)
        interval = min(PREDICTION_POLL, self._poll_interval)
        while prediction.get("status") not in FINISHED:
            if self.clock() - begun + interval > deadline:
                try:
                    self._cancel(prediction)
                    done = "it was cancelled"
                except ProviderError as e:
                    done = f"cancelling it failed: {e.message}"
                raise self.error(
                    where,
                    f"prediction {prediction.get('id')} did not finish within the run's "
                    f"deadline of {deadline:g} s (the deployment's timeoutSeconds); {done}",
                )
            self.sleep(interval)
            got = client.request("GET", self._own_url(prediction, "get"))
            prediction = client.json_object(got)
        latency = time.monotonic() - started
        status = prediction.get("status")
        if status != "succeeded":
            why = prediction.get("error") or "no error given"
            raise self.error(where, f"prediction {prediction.get('id')} {status}: {why}")
        raw = prediction.get("metrics")
        metrics: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        usage = Usage(
            count(metrics.get("input_token_count")), count(metrics.get("output_token_count"))
        )
        return Invocation(prediction.get("output"), usage, latency)

    def _own_url(self, prediction: Mapping[str, Any], which: str) -> str:
        """`urls.get` or `urls.cancel`, refused unless it is on the API's own host (the
        token goes with it)."""
        url = get_path(prediction, f"urls.{which}")
        base = httpx.URL(self.settings.base_url)
        try:
            u = httpx.URL(str(url))
        except (httpx.InvalidURL, TypeError, ValueError):
            u = None
        if (
            not isinstance(url, str)
            or u is None
            or (u.scheme, u.host, u.port)
            != (
                base.scheme,
                base.host,
                base.port,
            )
        ):
            raise self.error(
                f"prediction {prediction.get('id')}",
                f"urls.{which} is {url!r}, not on {base.host}: refusing to send the token there",
            )
        return url

    def _cancel(self, prediction: Mapping[str, Any]) -> None:
        """Stop a prediction the run no longer waits for (it would go on costing)."""
        self.http().request("POST", self._own_url(prediction, "cancel"), ok=(200, 201, 202, 204))


def _words(resp: Any) -> str:
    """Replicate's own words in an error answer (RFC 7807 `detail`, else `title`)."""
    try:
        data = resp.json()
    except ValueError:
        return f"{resp.status_code}"
    if isinstance(data, Mapping):
        return str(data.get("detail") or data.get("title") or resp.status_code)
    return f"{resp.status_code}"


def _check_scaling(spec: Mapping[str, Any], label: str) -> list[str | Problem]:
    out: list[str | Problem] = []
    scaling = spec.get("scaling")
    scaling = scaling if isinstance(scaling, Mapping) else {}
    hardware = scaling.get("hardware")
    if not hardware:
        out.append(
            Problem(
                f"{label} needs scaling.hardware, the hardware SKU (e.g. gpu-t4, gpu-a40-large, "
                "cpu)",
                ("scaling", "hardware") if scaling else ("model",),
            )
        )
    elif not HARDWARE.fullmatch(str(hardware)):
        out.append(
            Problem(
                f"scaling.hardware {hardware!r} is not a Replicate hardware SKU such as gpu-t4",
                ("scaling", "hardware"),
            )
        )
    low, high = scaling.get("minReplicas", 1), scaling.get("maxReplicas", 1)
    if isinstance(low, int) and low > MAX_MIN_INSTANCES:
        out.append(
            Problem(
                f"scaling.minReplicas {low} is more than Replicate allows "
                f"(min_instances 0 to {MAX_MIN_INSTANCES})",
                ("scaling", "minReplicas"),
            )
        )
    if isinstance(high, int) and high > MAX_MAX_INSTANCES:
        out.append(
            Problem(
                f"scaling.maxReplicas {high} is more than Replicate allows "
                f"(max_instances up to {MAX_MAX_INSTANCES})",
                ("scaling", "maxReplicas"),
            )
        )
    return out
