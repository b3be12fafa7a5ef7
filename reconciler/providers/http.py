"""Any REST deployment API of the shape in DESIGN.md ("Providers"), over httpx.

Objects are addressed by name for lookups and by server id for writes. Creating is
safe to retry: a POST whose answer was lost comes back as 409 on the retry, and a 409
means "look it up and adopt it", so nothing is ever created twice. An object found by
name is adopted, updated or deleted only when it is the instance's own: its `name` and
`environment` fields are the instance's, or its id is the one recorded in state (some
APIs keep names unique across environments and ignore the `environment` query; their
lookup may answer with another environment's object, which is never touched). Transient failures
(connection errors, a passed deadline, 408/429/5xx) are retried with exponential
backoff and full jitter, honouring `Retry-After` in full up to MAX_RETRY_WAIT and the
run's deadline (see `reconciler.httpclient`).
`timeoutSeconds` is each request's total deadline: connect, send and the whole answer,
however slowly a server sends it. Errors name the provider, the request and the
status; they never carry the token or a secret value.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from reconciler.errors import ProviderError
from reconciler.httpclient import HttpClient, Retry
from reconciler.instances import Instance, ProviderConfig
from reconciler.providers.base import (
    HealthStatus,
    Invocation,
    InvokeTarget,
    LiveObject,
    Provider,
    Usage,
    resolve_secrets,
)
from reconciler.providers.invoke import count
from reconciler.redaction import Register, to_backstop

Sleep = Callable[[float], None]
Clock = Callable[[], float]

DEFAULT_PATHS: Mapping[str, str] = {
    "Deployment": "/api/v1/deployments",
    "Schedule": "/api/v1/schedules",
}
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 4
#: The longest one request waits between its attempts in total, a server's Retry-After
#: included (asked for more, it fails at once saying so; a wait cut short would land
#: inside the server's window and burn a retry).
MAX_RETRY_WAIT = 600.0
_BACKOFF_BASE = 0.5
_BACKOFF_CAP = 30.0
_MAX_RETRIES = 20
_KNOWN_CONFIG = frozenset({"baseUrl", "timeoutSeconds", "retries", "paths"})
_KNOWN_CREDENTIALS = frozenset({"tokenEnv"})
#: Writes only: their outcomes with a 2xx status the provider accepts.
_CREATED = (200, 201)
_REPLACED = (200, 201, 204)


@dataclass(frozen=True)
class _Settings:
    base_url: str
    timeout: float
    retries: int
    paths: dict[str, str]


def _parse(config: ProviderConfig) -> tuple[_Settings, list[str]]:
    """Settings plus every problem with them (for validate and for a clear failure)."""
    c = config.config
    problems = [
        f"unknown config key {k!r} (the http provider takes: {', '.join(sorted(_KNOWN_CONFIG))})"
        for k in sorted(set(c) - _KNOWN_CONFIG)
    ]
    problems += [
        f"unknown credentials key {k!r} (the http provider takes: tokenEnv)"
        for k in sorted(set(config.credentials) - _KNOWN_CREDENTIALS)
    ]
    base = c.get("baseUrl")
    base_url = ""
    if base is None:
        problems.append("config.baseUrl is required (e.g. https://deploy.example.com)")
    elif not isinstance(base, str):
        problems.append("config.baseUrl must be a string URL")
    else:
        try:
            url = httpx.URL(base)
        except (httpx.InvalidURL, TypeError, ValueError):
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            problems.append(f"config.baseUrl must be an http(s) URL with a host, got {base!r}")
        elif url.query or url.fragment:
            problems.append(f"config.baseUrl must not have a query or fragment, got {base!r}")
        else:
            base_url = base.rstrip("/")

    timeout = c.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        problems.append(f"config.timeoutSeconds must be a positive number, got {timeout!r}")
        timeout = DEFAULT_TIMEOUT

    retries = c.get("retries", DEFAULT_RETRIES)
    if (
        isinstance(retries, bool)
        or not isinstance(retries, int)
        or not 0 <= retries <= _MAX_RETRIES
    ):
        problems.append(
            f"config.retries must be an integer from 0 to {_MAX_RETRIES}, got {retries!r}"
        )
        retries = DEFAULT_RETRIES

    paths = dict(DEFAULT_PATHS)
    raw_paths = c.get("paths")
    if raw_paths is not None:
        if not isinstance(raw_paths, dict):
            problems.append("config.paths must map a kind (Deployment, Schedule) to a path")
        else:
            for kind, path in raw_paths.items():
                if not (isinstance(path, str) and path.startswith("/")):
                    problems.append(f"config.paths.{kind} must be a path starting with '/'")
                else:
                    paths[str(kind)] = path.rstrip("/")
    return _Settings(base_url, float(timeout), int(retries), paths), problems


def _same(live: Mapping[str, Any], sent: Mapping[str, Any]) -> bool:
    return all(live.get(k) == v for k, v in sent.items())


def _shown(value: Any) -> str:
    """A name or environment from the server, short and quoted, for an error."""
    if isinstance(value, str):
        return repr(value[:80])
    return "none" if value is None else f"a {type(value).__name__}"


class HttpProvider(Provider):
    """A REST deployment API; config keys: baseUrl, timeoutSeconds, retries, paths."""

    type_name: ClassVar[str] = "http"
    immutable_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        config: ProviderConfig,
        *,
        repo_root: Path,
        env: Mapping[str, str],
        sleep: Sleep | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        register: Register = to_backstop,
    ) -> None:
        super().__init__(config, repo_root=repo_root, env=env, register=register)
        #: How retries wait; tests inject a recorder instead of waiting.
        self.sleep: Sleep = sleep or time.sleep
        self.clock: Clock = clock or time.time
        self._random = rng or random.Random()
        self._settings, self._problems = _parse(config)
        self._lock = threading.Lock()
        self._client: HttpClient | None = None

    # -- plumbing --------------------------------------------------------------------

    def _error(self, where: str, problem: str) -> ProviderError:
        text = f"provider {self.name!r} ({where}): {problem}"
        return ProviderError(self._client.scrub(text) if self._client else text)

    def _http(self) -> HttpClient:
        """The client, made on first use so plan-time validate needs no token."""
        with self._lock:
            if self._client is not None:
                return self._client
            if self._problems:
                raise ProviderError(
                    f"provider {self.name!r} is misconfigured: {'; '.join(self._problems)}"
                )
            headers = {"Accept": "application/json", "User-Agent": "reconciler"}
            var = self.config.credentials.get("tokenEnv")
            token = ""
            if var:
                token = (self._env.get(var) or "").strip()
                if not token:
                    raise ProviderError(
                        f"provider {self.name!r}: environment variable {var} is not set "
                        "(credentials.tokenEnv names it)"
                    )
                if not token.isascii() or not token.isprintable():
                    raise ProviderError(
                        f"provider {self.name!r}: the token in {var} has characters an HTTP "
                        "header cannot carry"
                    )
                headers["Authorization"] = f"Bearer {token}"
            self._client = HttpClient(
                register=self.register_found,
                label=f"provider {self.name!r}",
                headers=headers,
                secrets=[token],
                deadline=self._settings.timeout,
                deadline_source="config.timeoutSeconds",
                retry=Retry(
                    retries=self._settings.retries,
                    backoff=_BACKOFF_BASE,
                    backoff_cap=_BACKOFF_CAP,
                    max_wait=MAX_RETRY_WAIT,
                ),
                error=ProviderError,
                auth_hint=f"check the token in {var}" if var else "no credentials.tokenEnv set",
                env=self._env,
                max_connections=64,
                sleep=self.sleep,
                clock=self.clock,
                rng=self._random.random,
            )
            return self._client

    def _url(self, kind: str, suffix: str = "") -> str:
        path = self._settings.paths.get(kind)
        if path is None:
            raise ProviderError(
                f"provider {self.name!r} has no API path for kind {kind!r}; set config.paths.{kind}"
            )
        return f"{self._settings.base_url}{path}{suffix}"

    def _id(self, resp: httpx.Response) -> tuple[str, dict[str, Any]]:
        client = self._http()
        data = client.json_object(resp)
        ident = data.get("id")
        if isinstance(ident, bool) or not isinstance(ident, str | int) or ident == "":
            raise client.invalid(resp, f"{resp.status_code} answer has no `id`")
        return str(ident), data

    def _body(self, inst: Instance) -> dict[str, Any]:
        try:
            return resolve_secrets(inst.body(), self._env, self.register_found)
        except ProviderError as e:
            raise ProviderError(
                f"provider {self.name!r}: {inst.kind.lower()}.{inst.name}: {e.message}"
            ) from None

    def _put(
        self, kind: str, provider_id: str, body: dict[str, Any], *, ok: tuple[int, ...]
    ) -> httpx.Response:
        url = self._url(kind, "/" + quote(provider_id, safe=""))
        return self._http().request("PUT", url, json=body, ok=ok)

    # -- the contract ------------------------------------------------------------------

    def validate(self, inst: Instance) -> list[str]:
        problems = [f"provider {self.name!r}: {p}" for p in self._problems]
        if inst.kind not in self._settings.paths:
            problems.append(
                f"provider {self.name!r} has no API path for kind {inst.kind!r}; "
                f"set config.paths.{inst.kind}"
            )
        return problems

    def read(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> LiveObject | None:
        """The instance's object, found by name; another's is an error, never returned."""
        url = self._url(kind, "/name/" + quote(name, safe=""))
        resp = self._http().request("GET", url, params={"environment": environment}, ok=(200, 404))
        if resp.status_code == 404:
            return None
        ident, data = self._id(resp)
        live = LiveObject(provider_id=ident, body=data)
        self._check_owner(live, kind, name, environment, provider_id)
        return live

    def _check_owner(
        self,
        live: LiveObject,
        kind: str,
        name: str,
        environment: str,
        provider_id: str | None,
    ) -> None:
        """Refuse an object that is not the instance's own: the one with its recorded id,
        or one whose `name` and `environment` (as `_body` sends them) are the instance's.
        A lookup by name can answer with another environment's object when the API keeps
        names unique across environments."""
        if provider_id is not None and live.provider_id == provider_id:
            return
        have_env, have_name = live.body.get("environment"), live.body.get("name")
        if (have_env, have_name) == (environment, name):
            return
        found = (
            f"{_shown(have_name)} in environment {_shown(have_env)}"
            if have_env is not None or have_name is not None
            else "no `name` and `environment` fields to tell whose it is"
        )
        raise self._error(
            f"{kind.lower()}.{name} in {environment!r}",
            f"the lookup by name found object {live.provider_id!r}, which is not this "
            f"instance's: it has {found}; nothing was changed (the API may keep names unique "
            "across environments: give this instance another name)",
        )

    def create(self, inst: Instance) -> str:
        body = self._body(inst)
        # A repeated POST answers 409 and is adopted below: safe to retry.
        resp = self._http().request(
            "POST", self._url(inst.kind), json=body, ok=(*_CREATED, 409), idempotent=True
        )
        if resp.status_code != 409:
            return self._id(resp)[0]
        # It exists (maybe from our own earlier attempt whose answer was lost): adopt it.
        live = self.read(inst.kind, inst.name, inst.environment, None)
        if live is None:
            raise self._error(
                f"POST {self._url(inst.kind)}",
                f"409 Conflict, yet no {inst.kind.lower()} named {inst.name!r} in "
                f"{inst.environment!r} can be found",
            )
        if not _same(live.body, body):
            self._put(inst.kind, live.provider_id, body, ok=_REPLACED)
        return live.provider_id

    def update(self, inst: Instance, provider_id: str) -> None:
        body = self._body(inst)
        resp = self._put(inst.kind, provider_id, body, ok=(*_REPLACED, 404))
        if resp.status_code == 404:  # our id is stale; the name may live on under another
            live = self.read(inst.kind, inst.name, inst.environment, None)
            if live is None:
                raise self._error(
                    f"PUT {self._url(inst.kind, '/' + provider_id)}",
                    f"{inst.kind.lower()}.{inst.name} in {inst.environment!r} no longer exists "
                    "(removed outside reconciler); `reconciler drift --heal` recreates it",
                )
            self._put(inst.kind, live.provider_id, body, ok=_REPLACED)

    def delete(self, kind: str, name: str, environment: str, provider_id: str | None) -> None:
        if provider_id is None:
            live = self.read(kind, name, environment, None)
            if live is None:
                return
            provider_id = live.provider_id
        url = self._url(kind, "/" + quote(provider_id, safe=""))
        self._http().request("DELETE", url, ok=(200, 202, 204, 404))

    can_invoke: ClassVar[bool] = True
    #: `suspended: true` goes in the body; the API stops the deployment (docs/providers.md).
    suspend_refusal: ClassVar[str | None] = None

    def status(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> HealthStatus:
        live = self.read(kind, name, environment, provider_id)
        if live is None:
            return HealthStatus("Missing")
        if live.body.get("suspended") is True:
            return HealthStatus("Suspended", "suspended: true")
        return HealthStatus("Healthy")

    def invoke(self, target: InvokeTarget, input: Mapping[str, Any], deadline: float) -> Invocation:
        """`POST {path}/{id}/run` with `{"input": ...}`; the answer is `{"output": ...,
        "usage": {"inputTokens", "outputTokens"}}` (docs/providers.md, "Running a
        deployment"). Sent once: a run is not idempotent, so a request that may have
        reached the server is never retried; its total deadline is the provider's
        config.timeoutSeconds."""
        ident = target.provider_id
        if not ident:
            live = self.read("Deployment", target.name, target.environment, None)
            if live is None:
                raise self._error(
                    f"deployment.{target.name} in {target.environment!r}",
                    "it does not exist (removed outside reconciler)",
                )
            ident = live.provider_id
        url = self._url("Deployment", "/" + quote(ident, safe="") + "/run")
        client = self._http()
        started = time.monotonic()
        # The request's total deadline is config.timeoutSeconds (the client's).
        resp = client.request("POST", url, json={"input": dict(input)}, ok=(200,), idempotent=False)
        latency = time.monotonic() - started
        data = client.json_object(resp)
        if "output" not in data:
            raise client.invalid(resp, "200 answer has no `output`")
        reported = data.get("usage")
        usage: Mapping[str, Any] = reported if isinstance(reported, dict) else {}
        return Invocation(
            data["output"],
            Usage(count(usage.get("inputTokens")), count(usage.get("outputTokens"))),
            latency,
        )

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
