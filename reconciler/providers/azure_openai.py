"""Azure OpenAI deployments, through Azure Resource Manager (ARM).

What maps to what (README "Azure OpenAI", docs/providers.md):

    ARM resource        .../accounts/{config.account}/deployments/{azure.deploymentName,
                        else the deployment's name}, api-version config.apiVersion
    sku.name            azure.sku.name (Standard, GlobalStandard, ProvisionedManaged, ...);
                        before it, scaling.hardware (still read, deprecated)
    sku.capacity        azure.sku.capacity (thousands of tokens per minute, or PTUs; default
                        1); before it, scaling.maxReplicas (still read, deprecated)
    properties.model    {format: azure.modelFormat or OpenAI, name: model,
                         version: azure.modelVersion}
    properties.*        versionUpgradeOption, raiPolicyName from the `azure` block
    tags                reconciler-environment, reconciler-deployment: whose it is

A write is `PUT` (create-or-update, so a repeat is harmless); it is a long-running
operation, followed through `Azure-AsyncOperation` (or `Location`, or the resource's
`provisioningState`) until it ends, `Retry-After` between polls, within
config.operationTimeoutSeconds. Writes to one account are serialised (azure_auth.
AccountLocks: a lock per account in this process, a file lock across processes on this
machine), and a `409 RequestConflict` ("another operation is being performed on the
parent resource": another CI job, the portal) is waited out with backoff, bounded by
the same operation timeout. Azure cannot change a deployment's SKU name in place: an
update that would is refused before anything is written (give it another
azure.deploymentName). Before updating or deleting, the live deployment's tags must
name this environment and deployment: one made by hand, or by another environment,
is never touched.

Authentication (azure_auth): azure-identity's credential chain (service principal,
workload identity, managed identity, Azure CLI) with tokens refreshed before they
expire, unless the Provider names `credentials.tokenEnv`, a static token.

API: Azure/azure-rest-api-specs `specification/cognitiveservices/resource-manager/
Microsoft.CognitiveServices/stable/2024-10-01/cognitiveservices.json` (Deployments_*),
and ARM's "Track asynchronous Azure operations".
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from reconciler.errors import ProviderError
from reconciler.httpclient import HttpClient, Retry, current_wait_deadline
from reconciler.instances import Instance, ProviderConfig
from reconciler.log import get_logger
from reconciler.providers.azure_auth import (
    AccountLocks,
    CredentialAuth,
    TokenCredential,
    default_credential,
    lock_directory,
)
from reconciler.providers.base import (
    CannotInvoke,
    HealthStatus,
    Invocation,
    InvokeTarget,
    LiveObject,
    Problem,
    Usage,
)
from reconciler.providers.invoke import chat_messages, chat_options, chat_output, count
from reconciler.providers.vendor import (
    POLL_LATER,
    ClientOptions,
    Clock,
    ConfigReader,
    Sleep,
    VendorProvider,
    get_path,
    overlay,
    secret_from_env,
    unused_fields,
)
from reconciler.redaction import Register, to_backstop
from reconciler.vocabulary import Health

log = get_logger("reconciler.providers.azure")

API_VERSION = "2024-10-01"
#: The data plane's api-version for chat completions (Azure OpenAI "REST API reference",
#: the GA inference version).
INFERENCE_API_VERSION = "2024-10-21"
BASE_URL = "https://management.azure.com"
TAG_ENVIRONMENT = "reconciler-environment"
TAG_DEPLOYMENT = "reconciler-deployment"
#: ARM names in this API (accounts, RAI policies, models): Azure's own pattern.
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")
NAME_HINT = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
RESOURCE_GROUP = re.compile(r"[-\w.()]{0,89}[-\w()]")
API_VERSION_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
SKU = re.compile(r"[A-Za-z][A-Za-z0-9]*")
#: SKU names seen in Azure's documentation and public IaC; others are allowed, but one
#: differing only in case is a typo ARM would reject.
KNOWN_SKUS = (
    "Standard",
    "GlobalStandard",
    "DataZoneStandard",
    "ProvisionedManaged",
    "GlobalProvisionedManaged",
    "DataZoneProvisionedManaged",
    "GlobalBatch",
    "DataZoneBatch",
    "DeveloperTier",
)
#: provisioningState → health (DeploymentProvisioningState in the spec).
HEALTH: dict[str, Health] = {
    "Succeeded": "Healthy",
    "Accepted": "Progressing",
    "Creating": "Progressing",
    "Moving": "Progressing",
    "Deleting": "Progressing",
    "Failed": "Degraded",
    "Canceled": "Degraded",
    "Disabled": "Degraded",
}
#: Async-operation and provisioning states that end an operation.
DONE = frozenset({"Succeeded", "Failed", "Canceled"})
#: A 404 with one of these codes means the account (or above) is missing, not the
#: deployment: an error, never "not deployed".
PARENT_MISSING = frozenset(
    {"ParentResourceNotFound", "ResourceGroupNotFound", "SubscriptionNotFound"}
)
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 6
DEFAULT_OPERATION_TIMEOUT = 900.0
#: Seconds between polls of an operation when Azure gives no Retry-After.
POLL = 5.0
POLL_CAP = 60.0
#: Waiting out a 409 RequestConflict: the first wait, doubled each time up to the cap
#: (real operations take a minute or more), with jitter, unless Azure says Retry-After.
CONFLICT_WAIT = 5.0
CONFLICT_WAIT_CAP = 60.0
AUTHENTICATIONS = ("azure-identity", "token")
_UNUSED = {
    "prompt": "an Azure OpenAI deployment serves a model; a prompt belongs to the "
    "application (or a langfuse provider)",
    "options": "Azure OpenAI takes sampling options per request, not per deployment",
    "endpoint": "Azure OpenAI serves every deployment under the account's endpoint",
    "env": "an Azure OpenAI deployment has no environment variables",
    "timeoutSeconds": "an Azure OpenAI deployment has no request timeout",
    "enabled": "an Azure OpenAI deployment cannot be switched off; remove it instead",
}


@dataclass(frozen=True)
class Settings:
    base_url: str
    subscription: str
    resource_group: str
    account: str
    api_version: str
    timeout: float
    retries: int
    operation_timeout: float
    authentication: str
    token_env: str

    @property
    def account_path(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.CognitiveServices/accounts/{self.account}"
        )


def read_settings(r: ConfigReader) -> Settings:
    token = "tokenEnv" in r.pc.credentials
    authentication = r.choice(
        "authentication", "token" if token else "azure-identity", AUTHENTICATIONS
    )
    if authentication == "azure-identity" and token:
        r.problem(
            ("credentials", "tokenEnv"),
            "credentials.tokenEnv is a static token, but config.authentication is "
            "azure-identity: remove one",
        )
    return Settings(
        base_url=r.url("baseUrl", BASE_URL),
        subscription=r.text(
            "subscriptionId",
            pattern=GUID,
            hint="a subscription id is a GUID",
            required="00000000-0000-0000-0000-000000000000",
        ),
        resource_group=r.text(
            "resourceGroup",
            pattern=RESOURCE_GROUP,
            hint="1 to 90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.'",
            required="ai-production",
        ),
        account=r.text("account", pattern=NAME, hint=NAME_HINT, required="acme-openai"),
        api_version=r.text(
            "apiVersion",
            API_VERSION,
            pattern=API_VERSION_PATTERN,
            hint="an ARM api-version such as 2024-10-01",
        ),
        timeout=r.number("timeoutSeconds", DEFAULT_TIMEOUT),
        retries=r.integer("retries", DEFAULT_RETRIES),
        operation_timeout=r.number("operationTimeoutSeconds", DEFAULT_OPERATION_TIMEOUT),
        authentication=authentication,
        token_env=r.credential("tokenEnv", "AZURE_TOKEN") if authentication == "token" else "",
    )


def block(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    value = spec.get("azure")
    return value if isinstance(value, Mapping) else {}


def deployment_name(name: str, spec: Mapping[str, Any]) -> str:
    return str(block(spec).get("deploymentName") or name)


def sku_of(spec: Mapping[str, Any]) -> tuple[str | None, int, str, str]:
    """(name, capacity, name's field, capacity's field): from `azure.sku`, else from
    the deprecated `scaling.hardware` / `scaling.maxReplicas`."""
    sku = block(spec).get("sku")
    if isinstance(sku, Mapping):
        return (
            sku.get("name"),
            int(sku.get("capacity") or 1),
            "azure.sku.name",
            "azure.sku.capacity",
        )
    scaling = spec.get("scaling") or {}
    return (
        scaling.get("hardware"),
        int(scaling.get("maxReplicas") or 1),
        "scaling.hardware",
        "scaling.maxReplicas",
    )


def arm_body(name: str, environment: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The PUT body (`Deployment` in the spec) for a deployment's spec."""
    b = block(spec)
    sku_name, capacity, _, _ = sku_of(spec)
    model: dict[str, Any] = {"format": b.get("modelFormat") or "OpenAI", "name": spec.get("model")}
    if b.get("modelVersion"):
        model["version"] = b["modelVersion"]
    props: dict[str, Any] = {"model": model}
    for key in ("versionUpgradeOption", "raiPolicyName"):
        if b.get(key):
            props[key] = b[key]
    return {
        "sku": {"name": sku_name, "capacity": capacity},
        "tags": {TAG_ENVIRONMENT: environment, TAG_DEPLOYMENT: name},
        "properties": props,
    }


def _arm_error(data: Any) -> tuple[str, str]:
    """(code, message) of an ARM ErrorResponse, or of an async operation's `error`."""
    err = data.get("error") if isinstance(data, Mapping) else None
    if not isinstance(err, Mapping):
        return "", ""
    return str(err.get("code") or ""), str(err.get("message") or "")


class AzureOpenAIProvider(VendorProvider[Settings]):
    """Deployments in one Azure OpenAI (Cognitive Services) account; config:
    subscriptionId, resourceGroup, account, apiVersion, baseUrl, timeoutSeconds,
    retries, operationTimeoutSeconds, authentication; credentials:
    tokenEnv (a static token; without it, azure-identity's chain)."""

    type_name: ClassVar[str] = "azure-openai"
    replace_fields: ClassVar[Mapping[str, str]] = {
        "model": "Azure OpenAI keeps a deployment's model for life (only azure.modelVersion "
        "changes in place)",
        "azure.modelFormat": "the model format belongs to the model",
        "azure.deploymentName": "the name is the deployment's address in its account",
    }
    # The SKU name cannot change in place either; it is not listed here because moving
    # from the deprecated scaling.hardware to azure.sku.name (the same value under
    # another name) must not plan a replace: `update` compares it with the live SKU
    # and refuses a real change before writing anything.
    #: create and update return once ARM's operation has ended; this bounds the wait
    #: for `Succeeded` after that (a deployment may set readinessTimeoutSeconds).
    readiness_timeout: ClassVar[float] = 900.0
    poll_interval: ClassVar[float] = 10.0

    def __init__(
        self,
        config: ProviderConfig,
        *,
        repo_root: Path,
        env: Mapping[str, str],
        sleep: Sleep | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        credential: TokenCredential | None = None,
        register: Register = to_backstop,
    ) -> None:
        super().__init__(
            config,
            repo_root=repo_root,
            env=env,
            sleep=sleep,
            clock=clock,
            rng=rng,
            register=register,
        )
        #: The azure-identity credential (made on first use unless given: tests and
        #: embedders pass their own).
        self._credential = credential
        self.locks = AccountLocks(
            lock_directory(repo_root, env), sleep=self._sleep_now, clock=self._now
        )
        #: The data plane's client (runs), apart from ARM's: another host, another key.
        self._data: HttpClient | None = None
        self._data_lock = threading.Lock()

    def _sleep_now(self, seconds: float) -> None:
        self.sleep(seconds)

    def _now(self) -> float:
        return self.clock()

    @classmethod
    def config_keys(cls) -> frozenset[str]:
        return frozenset(
            {
                "baseUrl",
                "subscriptionId",
                "resourceGroup",
                "account",
                "apiVersion",
                "timeoutSeconds",
                "retries",
                "operationTimeoutSeconds",
                "authentication",
                "inferenceUrl",
                "inferenceApiVersion",
            }
        )

    @classmethod
    def credential_keys(cls) -> frozenset[str]:
        return frozenset({"tokenEnv", "apiKeyEnv"})

    @classmethod
    def ambient_credentials(cls, config: ProviderConfig) -> tuple[str, ...]:
        """Without a static token, azure-identity's chain (a managed or workload
        identity, a service principal's AZURE_CLIENT_SECRET, the Azure CLI) signs in."""
        return () if "tokenEnv" in config.credentials else ("AZURE_IDENTITY (ambient)",)

    def read_settings(self, reader: ConfigReader) -> Settings:
        return read_settings(reader)

    def client_options(self) -> ClientOptions:
        s = self.settings
        if s.authentication == "azure-identity":
            credential = self._credential or default_credential()
            return ClientOptions(
                base_url=s.base_url,
                deadline=s.timeout,
                retries=s.retries,
                headers={},
                auth=CredentialAuth(
                    credential, f"provider {self.name!r}", self._now, self.register_found
                ),
                auth_hint=(
                    f"the token from {type(credential).__name__} was refused: check the "
                    "identity's role on the account (Cognitive Services Contributor)"
                ),
            )
        token = secret_from_env(
            self._env,
            s.token_env,
            self.name,
            "an Entra ID token for https://management.azure.com: az account get-access-token "
            "--resource https://management.azure.com --query accessToken -o tsv",
        )
        return ClientOptions(
            base_url=s.base_url,
            deadline=s.timeout,
            retries=s.retries,
            headers={"Authorization": f"Bearer {token}"},
            secrets=(token,),
            auth_hint=(
                f"check the token in {s.token_env}: ARM tokens expire after about an hour "
                "(without credentials.tokenEnv, azure-identity fetches and refreshes them)"
            ),
        )

    # -- addresses -------------------------------------------------------------------------

    def _path(self, name: str, spec: Mapping[str, Any]) -> str:
        return f"{self.settings.account_path}/deployments/{quote(deployment_name(name, spec))}"

    def _resource(self, name: str, provider_id: str | None) -> str:
        """The deployment's ARM id: the recorded one, else the one its name gives."""
        if provider_id and provider_id.startswith("/subscriptions/"):
            return provider_id
        return self._path(name, {})

    def _get(self, path: str, *, polling: bool = False) -> dict[str, Any] | None:
        """The deployment, or None; `polling` (a health poll) hands a 429/503 back to
        apply as RetryAfter instead of waiting for it here."""
        client = self.http()
        resp = client.request(
            "GET",
            path.lstrip("/"),
            params={"api-version": self.settings.api_version},
            ok=(200, 404, *POLL_LATER) if polling else (200, 404),
        )
        if polling:
            self.poll_later(resp)
        if resp.status_code == 200:
            return client.json_object(resp)
        code, message = _arm_error(_json(resp))
        if code in PARENT_MISSING:
            raise self.error(f"GET {path}", f"404 {code}: {message}")
        return None

    # -- running a deployment (the data plane) ----------------------------------------------

    can_invoke: ClassVar[bool] = True
    suspend_refusal: ClassVar[str | None] = (
        "Azure OpenAI has no pause or scale to zero for a deployment (remove it, or lower "
        "scaling.maxReplicas, its capacity)"
    )

    def _data_plane(self) -> HttpClient:
        """A client for the account's endpoint, with the key credentials.apiKeyEnv names
        (the ARM token is for management.azure.com only)."""
        with self._data_lock:
            if self._data is not None:
                return self._data
            var = self.config.credentials.get("apiKeyEnv")
            if not var:
                raise CannotInvoke(
                    f"provider {self.name!r} cannot run a deployment without "
                    "credentials.apiKeyEnv (the variable holding the account's API key)"
                )
            key = secret_from_env(self._env, var, self.name, "the Azure OpenAI account's key")
            base = self.config.config.get("inferenceUrl")
            if not isinstance(base, str) or not base:
                base = f"https://{self.settings.account}.openai.azure.com"
            self._data = HttpClient(
                register=self.register_found,
                label=f"provider {self.name!r}",
                base_url=base.rstrip("/"),
                headers={"Accept": "application/json", "User-Agent": "reconciler", "api-key": key},
                secrets=[key],
                deadline=self.settings.timeout,
                deadline_source="config.timeoutSeconds",
                retry=Retry(retries=self.settings.retries),
                error=ProviderError,
                auth_hint=f"check the key in {var}",
                env=self._env,
                sleep=self.sleep,
                clock=self.clock,
                rng=self._random.random,
            )
            return self._data

    def invoke(self, target: InvokeTarget, input: Mapping[str, Any], deadline: float) -> Invocation:
        """Chat completions on the deployment's data plane: `POST {endpoint}/openai/
        deployments/{name}/chat/completions?api-version=`, usage from the answer's
        `usage` (prompt_tokens, completion_tokens). Sent once (a POST is retried only
        when it never left, or on 429)."""
        client = self._data_plane()
        name = deployment_name(target.name, target.spec)
        version = self.config.config.get("inferenceApiVersion") or INFERENCE_API_VERSION
        body = {
            "messages": chat_messages(target.spec, input),
            **chat_options(target.spec),
        }
        started = time.monotonic()
        resp = client.request(
            "POST",
            f"openai/deployments/{quote(name)}/chat/completions",
            params={"api-version": version},
            json=body,
            ok=(200,),
            idempotent=False,
        )
        latency = time.monotonic() - started
        data = client.json_object(resp)
        output = chat_output(data)
        if output is None:
            raise client.invalid(resp, "200 answer has no choices[0].message.content")
        usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
        assert isinstance(usage, Mapping)
        return Invocation(
            output,
            Usage(count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))),
            latency,
        )

    def close(self) -> None:
        with self._data_lock:
            if self._data is not None:
                self._data.close()
                self._data = None
        super().close()

    def _check_owner(self, live: Mapping[str, Any], name: str, environment: str) -> None:
        """The live deployment must carry this environment's and deployment's tags."""
        tags = live.get("tags") or {}
        env_tag, name_tag = tags.get(TAG_ENVIRONMENT), tags.get(TAG_DEPLOYMENT)
        if (env_tag, name_tag) == (environment, name):
            return
        where = f"Azure deployment {live.get('name')!r} in account {self.settings.account!r}"
        if env_tag is None and name_tag is None:
            raise self.error(
                f"deployment.{name}",
                f"{where} exists and was not made by reconciler (no {TAG_ENVIRONMENT} / "
                f"{TAG_DEPLOYMENT} tags); nothing was changed. Give this deployment another "
                f"azure.deploymentName, or tag that one {TAG_ENVIRONMENT}={environment} "
                f"{TAG_DEPLOYMENT}={name} to adopt it",
            )
        raise self.error(
            f"deployment.{name}",
            f"{where} belongs to deployment.{name_tag} in {env_tag!r}, not to "
            f"deployment.{name} in {environment!r}; nothing was changed",
        )

    # -- long-running operations -----------------------------------------------------------

    def _same_origin(self, url: str) -> bool:
        """Follow only URLs on the ARM host: the bearer token goes with every request."""
        u, base = httpx.URL(url), httpx.URL(self.settings.base_url)
        return (u.scheme, u.host, u.port) == (base.scheme, base.host, base.port)

    def _wait(self, resp: httpx.Response, path: str, what: str, *, deleting: bool) -> None:
        """Follow a write's operation until it ends; a failed one raises its error."""
        operation = resp.headers.get("azure-asyncoperation")
        location = resp.headers.get("location")
        if operation is None and location is None:
            state = get_path(_json(resp), "properties.provisioningState")
            if state in ("Failed", "Canceled"):
                raise self.error(what, f"provisioningState {state}")
            if (deleting and resp.status_code != 202) or (not deleting and state in (None, *DONE)):
                return
        for url in (operation, location):
            if url is not None and not self._same_origin(url):
                raise self.error(
                    what,
                    f"Azure asked to poll {httpx.URL(url).host}, not the "
                    "ARM host; not following it",
                )
        started = self.clock()
        delay = _retry_after(resp)
        while True:
            if self.clock() - started + delay > self.settings.operation_timeout:
                raise self.error(
                    what,
                    f"the operation did not end within {self.settings.operation_timeout:g}s "
                    "(config.operationTimeoutSeconds); apply again to go on waiting",
                )
            self.sleep(delay)
            done, poll = self._poll(operation, location, path, what, deleting=deleting)
            if done:
                return
            delay = _retry_after(poll)

    def _poll(
        self, operation: str | None, location: str | None, path: str, what: str, *, deleting: bool
    ) -> tuple[bool, httpx.Response]:
        client = self.http()
        if operation is not None:
            resp = client.request("GET", operation)
            data = client.json_object(resp)
            status = data.get("status")
            if status in ("Failed", "Canceled"):
                code, message = _arm_error(data)
                raise self.error(what, f"operation {status}: {code} {message}".rstrip())
            return status == "Succeeded", resp
        if location is not None:
            resp = client.request("GET", location, ok=(200, 202, 204))
            return resp.status_code != 202, resp
        resp = client.request(
            "GET",
            path.lstrip("/"),
            params={"api-version": self.settings.api_version},
            ok=(200, 404),
        )
        if resp.status_code == 404:
            if deleting:
                return True, resp
            raise self.error(what, "the deployment disappeared while it was being written")
        state = get_path(client.json_object(resp), "properties.provisioningState")
        if state in ("Failed", "Canceled"):
            raise self.error(what, f"provisioningState {state}")
        return state == "Succeeded", resp

    def _writer(self) -> Any:
        """Hold the account's write lock (this process's threads, then other processes
        on this machine), waiting at most the operation timeout."""
        s = self.settings
        return self.locks.hold(
            s.base_url + s.account_path, s.account, s.operation_timeout, f"provider {self.name!r}"
        )

    def _write(self, method: str, path: str, body: Any, ok: tuple[int, ...]) -> httpx.Response:
        """One write, a 409 RequestConflict (another operation on the account: another
        CI job, the portal) waited out with backoff for at most the operation timeout."""
        started = self.clock()
        limit = self.settings.operation_timeout
        attempt = 0
        while True:
            resp = self.http().request(
                method,
                path.lstrip("/"),
                params={"api-version": self.settings.api_version},
                json=body,
                ok=(*ok, 409),
            )
            if resp.status_code != 409:
                return resp
            code, message = _arm_error(_json(resp))
            what = f"{method} {path}"
            if code not in ("RequestConflict", "Conflict", ""):
                raise self.error(what, f"409 {code}: {message}".rstrip(": "))
            hinted = resp.headers.get("retry-after")
            ceiling = min(CONFLICT_WAIT_CAP, CONFLICT_WAIT * 2.0**attempt)
            delay = (
                _retry_after(resp)
                if hinted is not None
                else ceiling / 2 + self._random.random() * ceiling / 2
            )
            waited = self.clock() - started
            outer = current_wait_deadline()
            if outer is not None and delay > outer.left():
                raise self.error(
                    what,
                    f"409 {code or 'Conflict'}: the account is busy with another operation, "
                    f"and waiting {delay:.0f}s more would pass {outer.name}: {message}",
                )
            if waited + delay > limit:
                raise self.error(
                    what,
                    f"409 {code or 'Conflict'}: the account was still busy with another "
                    f"operation after {waited:.0f}s, and waiting {delay:.0f}s more would pass "
                    f"config.operationTimeoutSeconds ({limit:g}s); apply again later: {message}",
                )
            log.warning(
                "azure.conflict.wait",
                provider=self.name,
                request=what,
                wait=round(delay, 3),
                waited=round(waited, 3),
                why="409 RequestConflict: another operation is running on the account",
            )
            self.sleep(delay)
            attempt += 1

    def _put(self, inst: Instance, path: str) -> str:
        body = arm_body(inst.name, inst.environment, inst.spec)
        what = f"PUT {path}"
        with self._writer():
            resp = self._write("PUT", path, body, (200, 201))
            data = self.http().json_object(resp)
            self._wait(resp, path, what, deleting=False)
        ident = data.get("id")
        return str(ident) if isinstance(ident, str) and ident else path

    # -- plan time ---------------------------------------------------------------------------

    def identity(self, inst: Instance) -> str | None:
        if inst.kind != "Deployment":
            return None
        return (self.settings.base_url + self._path(inst.name, inst.spec)).lower()

    def validate(self, inst: Instance) -> list[str | Problem]:
        problems: list[str | Problem] = list(self.problems)
        label = f"provider {self.name!r} (azure-openai)"
        if inst.kind != "Deployment":
            problems.append(Problem(f"{label} deploys models; it runs no schedules"))
            return problems
        problems.extend(unused_fields(inst, self.name, "azure-openai", _UNUSED))
        spec, b = inst.spec, block(inst.spec)
        model = str(spec.get("model", ""))
        if not NAME.fullmatch(model):
            problems.append(
                Problem(f"model {model!r} is not an Azure model name: {NAME_HINT}", ("model",))
            )
        for key in ("deploymentName", "modelVersion", "modelFormat", "raiPolicyName"):
            value = b.get(key)
            if value is not None and not NAME.fullmatch(str(value)):
                problems.append(
                    Problem(f"azure.{key} {value!r} is not valid: {NAME_HINT}", ("azure", key))
                )
        if not b.get("deploymentName") and not NAME.fullmatch(inst.name):
            problems.append(
                Problem(
                    f"{inst.name!r} cannot be an Azure deployment name: set "
                    f"azure.deploymentName ({NAME_HINT})",
                    ("azure",),
                )
            )
        problems.extend(_sku_problems(label, spec))
        return problems

    # -- the contract ------------------------------------------------------------------------

    def read(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> LiveObject | None:
        path = self._resource(name, provider_id)
        live = self._get(path)
        return None if live is None else LiveObject(str(live.get("id") or path), live)

    def status(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> HealthStatus:
        live = self._get(self._resource(name, provider_id), polling=True)
        if live is None:
            return HealthStatus("Missing", "no such deployment in the account")
        state = str(get_path(live, "properties.provisioningState") or "Succeeded")
        health = HEALTH.get(state, "Progressing")
        return HealthStatus(health, f"provisioningState {state}")

    def create(self, inst: Instance) -> str:
        path = self._path(inst.name, inst.spec)
        live = self._get(path)
        if live is not None:  # ours from an earlier attempt, or refused
            self._check_owner(live, inst.name, inst.environment)
        return self._put(inst, path)

    def update(self, inst: Instance, provider_id: str) -> None:
        path = self._path(inst.name, inst.spec)
        live = self._get(path)
        if live is None:
            raise self.error(
                inst.key.address,
                f"Azure deployment {deployment_name(inst.name, inst.spec)!r} no longer exists "
                "(removed outside reconciler); `reconciler drift --heal` recreates it",
            )
        self._check_owner(live, inst.name, inst.environment)
        if str(live.get("id", path)).lower() != provider_id.lower():
            raise self.error(
                inst.key.address,
                f"recorded as {provider_id}, but the manifests now address {path}; that is a "
                "replace, which `reconciler plan` shows: re-plan",
            )
        want, _, field, _ = sku_of(inst.spec)
        have = get_path(live, "sku.name")
        if have is not None and want != have:
            raise self.error(
                inst.key.address,
                f"Azure cannot change a deployment's SKU in place ({have} → {want}, "
                f"{field}); nothing was changed. To move it, give it a new "
                "azure.deploymentName: the plan then shows a replace",
            )
        self._put(inst, path)

    def delete(self, kind: str, name: str, environment: str, provider_id: str | None) -> None:
        path = self._resource(name, provider_id)
        live = self._get(path)
        if live is None:
            return
        self._check_owner(live, name, environment)
        with self._writer():
            resp = self._write("DELETE", path, None, (200, 202, 204))
            self._wait(resp, path, f"DELETE {path}", deleting=True)

    def live_body(self, live: LiveObject, recorded: Mapping[str, Any]) -> dict[str, Any]:
        want = arm_body(str(recorded.get("name")), str(recorded.get("environment")), recorded)
        have = live.body
        _, _, name_field, capacity_field = sku_of(recorded)
        fields: list[tuple[str, Any, Any]] = [
            (
                "model",
                get_path(want, "properties.model.name"),
                get_path(have, "properties.model.name"),
            ),
            (name_field, get_path(want, "sku.name"), get_path(have, "sku.name")),
            (capacity_field, get_path(want, "sku.capacity"), get_path(have, "sku.capacity")),
            (
                "azure.modelFormat",
                get_path(want, "properties.model.format"),
                get_path(have, "properties.model.format"),
            ),
        ]
        # Left out of the manifests, Azure picks these; only pinned ones can drift.
        b = block(recorded)
        optional = {
            "modelVersion": "properties.model.version",
            "versionUpgradeOption": "properties.versionUpgradeOption",
            "raiPolicyName": "properties.raiPolicyName",
        }
        for key, path in optional.items():
            if b.get(key):
                fields.append((f"azure.{key}", b[key], get_path(have, path)))
        return overlay(recorded, fields)


def _sku_problems(label: str, spec: Mapping[str, Any]) -> list[str | Problem]:
    """The SKU: `azure.sku.name` and `.capacity`, as ARM and Terraform's azurerm name
    them; or, deprecated but still read, `scaling.hardware` and `scaling.maxReplicas`.
    Both at once is an error: which one counts would be a guess."""
    sku = block(spec).get("sku")
    scaling = spec.get("scaling")
    if isinstance(sku, Mapping):
        if isinstance(scaling, Mapping):
            return [
                Problem(
                    f"{label}: `scaling` has no meaning next to azure.sku (the SKU is the "
                    "deployment's scale): remove it",
                    ("scaling",),
                )
            ]
        at: tuple[str | int, ...] = ("azure", "sku", "name")
        name, field = sku.get("name"), "azure.sku.name"
    else:
        at, field = ("scaling", "hardware"), "scaling.hardware"
        name = scaling.get("hardware") if isinstance(scaling, Mapping) else None
    if not name:
        return [
            Problem(
                f"{label} needs azure.sku.name, the SKU (e.g. GlobalStandard), and "
                "azure.sku.capacity, its capacity (thousands of tokens per minute, or PTUs)",
                ("azure",),
            )
        ]
    name = str(name)
    if not SKU.fullmatch(name):
        return [Problem(f"{field} {name!r} is not an Azure SKU name (letters and digits)", at)]
    same = [k for k in KNOWN_SKUS if k.lower() == name.lower() and k != name]
    if same:
        return [
            Problem(
                f"{field} {name!r}: Azure SKU names are case-sensitive; did you mean {same[0]!r}?",
                at,
            )
        ]
    return []


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _retry_after(resp: httpx.Response) -> float:
    """Azure's Retry-After (seconds) between polls, else POLL; at most POLL_CAP."""
    value = resp.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else POLL
    except ValueError:
        seconds = POLL
    return min(max(seconds, 0.0), POLL_CAP)
