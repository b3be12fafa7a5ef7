"""Any REST deployment API of the shape in DESIGN.md ("Providers"), over httpx.

Objects are addressed by name for lookups and by server id for writes. Creating is
safe to retry: a POST whose answer was lost comes back as 409 on the retry, and a 409
means "look it up and adopt it", so nothing is ever created twice. Transient failures
(connection errors, timeouts, 408/429/5xx) are retried with exponential backoff and
full jitter, honouring `Retry-After`. Errors name the provider, the request and the
status; they never carry the token or a secret value.
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from reconciler.errors import ProviderError
from reconciler.instances import Instance, ProviderConfig
from reconciler.log import get_logger, redact, register_secret
from reconciler.providers.base import LiveObject, Provider, resolve_secrets

_log = get_logger("reconciler.providers.http")

Sleep = Callable[[float], None]
Clock = Callable[[], float]

DEFAULT_PATHS: Mapping[str, str] = {
    "Deployment": "/api/v1/deployments",
    "Schedule": "/api/v1/schedules",
}
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 4
#: The longest wait a server's Retry-After can ask for.
RETRY_AFTER_CAP = 30.0
_BACKOFF_BASE = 0.5
_BACKOFF_CAP = 30.0
_MAX_RETRIES = 20
_KNOWN_CONFIG = frozenset({"baseUrl", "timeoutSeconds", "retries", "paths"})
_KNOWN_CREDENTIALS = frozenset({"tokenEnv"})
#: 501 and 505 will not get better by asking again.
_NOT_RETRIED_5XX = frozenset({501, 505})


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


def _retryable(status: int) -> bool:
    return status in (408, 429) or (500 <= status <= 599 and status not in _NOT_RETRIED_5XX)


def _describe(e: httpx.TransportError, timeout: float) -> str:
    """A short, value-free account of what went wrong on the wire."""
    if isinstance(e, httpx.ConnectTimeout):
        return f"connect timed out after {timeout:g}s"
    if isinstance(e, httpx.TimeoutException):
        return f"no answer within {timeout:g}s"
    text = str(e).lower()
    if isinstance(e, httpx.ConnectError):
        if "refused" in text:
            return "connection refused"
        if "name or service" in text or "nodename" in text or "getaddrinfo" in text:
            return "host not found"
        return "cannot connect"
    if isinstance(e, httpx.RemoteProtocolError):
        return "connection closed without an answer"
    if "reset" in text:
        return "connection reset"
    return f"transport error ({type(e).__name__})"


def _server_message(resp: httpx.Response) -> str:
    """The server's own explanation, if any, cut to one short line."""
    msg: str | None = None
    try:
        data = resp.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "message", "detail", "title"):
            v = data.get(key)
            if isinstance(v, dict):
                v = v.get("message")
            if isinstance(v, str) and v.strip():
                msg = v
                break
    elif data is None and resp.headers.get("content-type", "").startswith("text/"):
        msg = resp.text
    if msg is None:
        return ""
    msg = " ".join(msg.split())
    return msg if len(msg) <= 200 else msg[:199] + "…"


def _same(live: Mapping[str, Any], sent: Mapping[str, Any]) -> bool:
    return all(live.get(k) == v for k, v in sent.items())


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
    ) -> None:
        super().__init__(config, repo_root=repo_root, env=env)
        #: How retries wait; tests inject a recorder instead of waiting.
        self.sleep: Sleep = sleep or time.sleep
        self.clock: Clock = clock or time.time
        self._random = rng or random.Random()
        self._settings, self._problems = _parse(config)
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._token: str | None = None

    # -- plumbing --------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        text = redact(text)
        return text.replace(self._token, "(sensitive)") if self._token else text

    def _error(self, where: str, problem: str) -> ProviderError:
        return ProviderError(self._scrub(f"provider {self.name!r} ({where}): {problem}"))

    def _http(self) -> httpx.Client:
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
                register_secret(token)
                self._token = token
                headers["Authorization"] = f"Bearer {token}"
            self._client = httpx.Client(
                headers=headers,
                timeout=httpx.Timeout(self._settings.timeout),
                follow_redirects=False,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            )
            return self._client

    def _url(self, kind: str, suffix: str = "") -> str:
        path = self._settings.paths.get(kind)
        if path is None:
            raise ProviderError(
                f"provider {self.name!r} has no API path for kind {kind!r}; set config.paths.{kind}"
            )
        return f"{self._settings.base_url}{path}{suffix}"

    def _backoff(self, attempt: int) -> float:
        return self._random.uniform(0.0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0**attempt))

    def _retry_after(self, resp: httpx.Response) -> float | None:
        raw = resp.headers.get("Retry-After")
        if raw is None:
            return None
        raw = raw.strip()
        try:
            seconds = float(raw)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = when.timestamp() - self.clock()
        if not math.isfinite(seconds):
            return None
        return min(max(seconds, 0.0), RETRY_AFTER_CAP)

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> httpx.Response:
        """Send, retrying transient failures; any final answer is returned to the caller."""
        client = self._http()
        where = f"{method} {httpx.URL(url, params=params) if params else url}"
        attempts = self._settings.retries + 1
        for attempt in range(attempts):
            try:
                resp = client.request(method, url, params=params, json=json)
            except httpx.TransportError as e:
                problem = _describe(e, self._settings.timeout)
                delay = self._backoff(attempt)
            except httpx.HTTPError as e:
                raise self._error(where, f"request failed ({type(e).__name__})") from None
            else:
                if not _retryable(resp.status_code):
                    return resp
                problem = f"{resp.status_code} {resp.reason_phrase}".strip()
                wait = self._retry_after(resp)
                delay = self._backoff(attempt) if wait is None else wait
            if attempt + 1 >= attempts:
                tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
                raise self._error(where, f"{problem} after {tries}")
            _log.warning(
                "provider.retry",
                provider=self.name,
                request=where,
                problem=problem,
                attempt=attempt + 1,
                wait=round(delay, 3),
            )
            self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _unexpected(self, resp: httpx.Response) -> ProviderError:
        where = f"{resp.request.method} {resp.request.url}"
        problem = f"{resp.status_code} {resp.reason_phrase}".strip()
        if resp.status_code in (401, 403):
            var = self.config.credentials.get("tokenEnv")
            problem += f" (check the token in {var})" if var else " (no credentials.tokenEnv set)"
        msg = _server_message(resp)
        return self._error(where, f"{problem}: {msg}" if msg else problem)

    def _json_object(self, resp: httpx.Response) -> dict[str, Any]:
        where = f"{resp.request.method} {resp.request.url}"
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise self._error(where, f"{resp.status_code} answer is not a JSON object")
        return data

    def _id(self, resp: httpx.Response) -> tuple[str, dict[str, Any]]:
        data = self._json_object(resp)
        ident = data.get("id")
        if isinstance(ident, bool) or not isinstance(ident, str | int) or ident == "":
            where = f"{resp.request.method} {resp.request.url}"
            raise self._error(where, f"{resp.status_code} answer has no `id`")
        return str(ident), data

    def _body(self, inst: Instance) -> dict[str, Any]:
        try:
            return resolve_secrets(inst.body(), self._env)
        except ProviderError as e:
            raise ProviderError(
                f"provider {self.name!r}: {inst.kind.lower()}.{inst.name}: {e.message}"
            ) from None

    def _put(self, kind: str, provider_id: str, body: dict[str, Any]) -> httpx.Response:
        return self._request("PUT", self._url(kind, "/" + quote(provider_id, safe="")), json=body)

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
        url = self._url(kind, "/name/" + quote(name, safe=""))
        resp = self._request("GET", url, params={"environment": environment})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._unexpected(resp)
        ident, data = self._id(resp)
        return LiveObject(provider_id=ident, body=data)

    def create(self, inst: Instance) -> str:
        body = self._body(inst)
        resp = self._request("POST", self._url(inst.kind), json=body)
        if resp.status_code in (200, 201):
            return self._id(resp)[0]
        if resp.status_code != 409:
            raise self._unexpected(resp)
        # It exists (maybe from our own earlier attempt whose answer was lost): adopt it.
        live = self.read(inst.kind, inst.name, inst.environment, None)
        if live is None:
            raise self._error(
                f"POST {self._url(inst.kind)}",
                f"409 Conflict, yet no {inst.kind.lower()} named {inst.name!r} in "
                f"{inst.environment!r} can be found",
            )
        if not _same(live.body, body):
            put = self._put(inst.kind, live.provider_id, body)
            if put.status_code not in (200, 201, 204):
                raise self._unexpected(put)
        return live.provider_id

    def update(self, inst: Instance, provider_id: str) -> None:
        body = self._body(inst)
        resp = self._put(inst.kind, provider_id, body)
        if resp.status_code == 404:  # our id is stale; the name may live on under another
            live = self.read(inst.kind, inst.name, inst.environment, None)
            if live is None:
                raise self._error(
                    f"PUT {self._url(inst.kind, '/' + provider_id)}",
                    f"{inst.kind.lower()}.{inst.name} in {inst.environment!r} no longer exists "
                    "(removed outside reconciler); `reconciler drift --heal` recreates it",
                )
            resp = self._put(inst.kind, live.provider_id, body)
        if resp.status_code not in (200, 201, 204):
            raise self._unexpected(resp)

    def delete(self, kind: str, name: str, environment: str, provider_id: str | None) -> None:
        if provider_id is None:
            live = self.read(kind, name, environment, None)
            if live is None:
                return
            provider_id = live.provider_id
        resp = self._request("DELETE", self._url(kind, "/" + quote(provider_id, safe="")))
        if resp.status_code not in (200, 202, 204, 404):
            raise self._unexpected(resp)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
