"""A small forge API client: retries, rate limits, pagination, and no leaked tokens.

Every failure becomes an `ApprovalSourceError` (the gate then fails closed). Waits
go through an injectable `sleep` and are bounded both in number and in total time.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

import httpx

from reconciler.errors import ApprovalSourceError
from reconciler.log import get_logger, register_secret

_log = get_logger("reconciler.approvals")

Sleep = Callable[[float], None]
Clock = Callable[[], float]

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 4
DEFAULT_MAX_WAIT = 300.0
_MAX_PAGES = 100
_BACKOFF_CAP = 30.0


class Secret:
    """A token that never shows itself in a repr, str or f-string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def _scrub(text: str, secret: Secret) -> str:
    token = secret.reveal()
    return text.replace(token, "***") if token else text


class ApiClient:
    """One forge's REST API at `base_url`, with auth headers set once."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        headers: Mapping[str, str],
        secret: Secret,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_wait: float = DEFAULT_MAX_WAIT,
        backoff: float = 1.0,
        sleep: Sleep = time.sleep,
        clock: Clock = time.time,
    ) -> None:
        self.name = name
        self._secret = secret
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        self._client = httpx.Client(
            base_url=self._base, headers=dict(headers), timeout=timeout, follow_redirects=False
        )
        self._max_retries = max(0, max_retries)
        self._max_wait = max(0.0, max_wait)
        self._backoff = backoff
        self._sleep = sleep
        self._clock = clock

    def __repr__(self) -> str:
        return f"ApiClient({self.name}, {str(self._base)!r})"

    def close(self) -> None:
        self._client.close()

    # --- requests ------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        ok: Collection[int] = (200,),
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send one request, retrying what is safe to retry; answers outside `ok` raise.

        Non-idempotent calls (POST) are retried only when the request surely did not
        reach the server (connection refused) or the server refused it for rate limits.
        """
        if idempotent is None:
            idempotent = method.upper() in {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}
        where = f"{method.upper()} {httpx.URL(path).path or path}"
        waited = 0.0
        attempt = 0
        while True:
            try:
                resp = self._client.request(method, path, params=params, json=json)
            except httpx.TransportError as e:
                if not idempotent and not isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
                    raise self._fail(
                        f"{where}: {_transport(e)} (not retried: it may have been applied)"
                    ) from None
                problem = _transport(e)
                delay = self._backoff_delay(attempt)
            else:
                if resp.status_code in ok:
                    return resp
                retry = self._retry_delay(resp, attempt, idempotent)
                if retry is None:
                    raise self._error(where, resp)
                problem = f"{resp.status_code} {resp.reason_phrase}".strip()
                delay = retry
            attempt += 1
            if attempt > self._max_retries:
                raise self._fail(f"{where}: {problem}; gave up after {attempt} attempts")
            if waited + delay > self._max_wait:
                raise self._fail(
                    f"{where}: {problem}; retrying needs a wait of {delay:.0f}s, over the "
                    f"limit of {self._max_wait:.0f}s in total"
                )
            _log.warning(
                "approvals.retry", api=self.name, request=where, problem=problem, wait=delay
            )
            self._sleep(delay)
            waited += delay

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._json(self.request("GET", path, params=params), f"GET {path}")

    def get_or_none(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        missing: Collection[int] = (404,),
    ) -> Any:
        """The JSON answer, or None when the status is one of `missing`."""
        resp = self.request("GET", path, params=params, ok=(200, *missing))
        return None if resp.status_code in missing else self._json(resp, f"GET {path}")

    def send(
        self, method: str, path: str, body: Any, *, ok: Collection[int] = (200, 201)
    ) -> httpx.Response:
        return self.request(method, path, json=body, ok=ok)

    def paginate(self, path: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Every item of a list endpoint, following `Link: rel="next"` as given."""
        items: list[Any] = []
        url: str = path
        query: Mapping[str, Any] | None = {"per_page": 100, **(params or {})}
        for _ in range(_MAX_PAGES):
            resp = self.request("GET", url, params=query)
            page = self._json(resp, f"GET {path}")
            if not isinstance(page, list):
                raise self._fail(f"GET {path}: expected a list, got {type(page).__name__}")
            items.extend(page)
            nxt = resp.links.get("next", {}).get("url")
            if not nxt:
                return items
            self._same_origin(nxt, path)
            url, query = nxt, None
        raise self._fail(f"GET {path}: more than {_MAX_PAGES} pages; refusing to go on")

    # --- internals -----------------------------------------------------------------

    def _json(self, resp: httpx.Response, where: str) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise self._fail(f"{where}: the answer is not JSON") from None

    def _same_origin(self, url: str, path: str) -> None:
        u = httpx.URL(url)
        if (u.scheme, u.host, u.port) != (self._base.scheme, self._base.host, self._base.port):
            raise self._fail(f"GET {path}: the next page points at another host ({u.host})")

    def _backoff_delay(self, attempt: int) -> float:
        return float(min(self._backoff * 2**attempt, _BACKOFF_CAP))

    def _retry_delay(self, resp: httpx.Response, attempt: int, idempotent: bool) -> float | None:
        status = resp.status_code
        h = resp.headers
        if status in (403, 429):
            after = _retry_after(h.get("retry-after"), self._clock)
            if after is not None:
                return after
            remaining = h.get("x-ratelimit-remaining", h.get("ratelimit-remaining"))
            reset = h.get("x-ratelimit-reset", h.get("ratelimit-reset"))
            if remaining is not None and remaining.strip() == "0" and reset is not None:
                try:
                    return max(0.0, float(reset) - self._clock()) + 1.0
                except ValueError:
                    pass
            if status == 429 or "rate limit" in _message(resp).lower():
                return float(60.0 * 2**attempt)
            return None
        if status >= 500 and idempotent:
            after = _retry_after(h.get("retry-after"), self._clock)
            return after if after is not None else self._backoff_delay(attempt)
        return None

    def _error(self, where: str, resp: httpx.Response) -> ApprovalSourceError:
        status = resp.status_code
        msg = _message(resp)
        text = f"{where} answered {status} {resp.reason_phrase}".rstrip()
        if msg:
            text += f": {msg}"
        hint = {
            401: "the token was refused: check that it is set, valid and not expired",
            403: "the token lacks a permission this call needs",
            404: "not found, or not visible to the token",
        }.get(status)
        if 300 <= status < 400:
            hint = f"the API redirected to {resp.headers.get('location', '?')}; fix the URL"
        return self._fail(text, details=hint)

    def _fail(self, text: str, *, details: str | None = None) -> ApprovalSourceError:
        message = _scrub(f"{self.name} API: {text}", self._secret)
        return ApprovalSourceError(
            message, details=_scrub(details, self._secret) if details else None
        )


def _transport(e: httpx.TransportError) -> str:
    detail = str(e).strip()
    return f"{type(e).__name__}: {detail}" if detail else type(e).__name__


def _message(resp: httpx.Response) -> str:
    """The API's own error message (GitHub `message`, GitLab `message`/`error`)."""
    try:
        body = resp.json()
    except ValueError:
        return ""
    msg: Any = None
    if isinstance(body, dict):
        msg = body.get("message") or body.get("error")
    if msg is None:
        return ""
    text = msg if isinstance(msg, str) else str(msg)
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:199] + "…"


def _retry_after(value: str | None, clock: Clock) -> float | None:
    """`Retry-After` as seconds (a number or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - clock())


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp from a forge's JSON (`Z` included), else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def json_str(obj: Any, *keys: str) -> str | None:
    """A non-empty string at `obj[k1][k2]…` of a forge's JSON, else None."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj if isinstance(obj, str) and obj else None
