"""What the GitHub and GitLab clients share: one `HttpClient` set up for a forge API,
its error wording, and readers for the forges' JSON.

Every failure is an `ApprovalSourceError` (the gate then fails closed). Retries wait
through an injectable `sleep`, bounded in number and in total time; each request has
a total deadline (RECONCILER_FORGE_TIMEOUT, default 30 s).
"""

from __future__ import annotations

import random
import time
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import httpx

from reconciler.errors import ApprovalSourceError
from reconciler.forge import DEFAULT_DEADLINE, TIMEOUT_ENV
from reconciler.httpclient import (
    Clock,
    Explain,
    Failure,
    HttpClient,
    Retry,
    Rng,
    Sleep,
    plural,
    server_message,
)
from reconciler.redaction import Register, to_backstop

DEFAULT_MAX_RETRIES = 4
DEFAULT_MAX_WAIT = 300.0
#: GitHub asks a client rate-limited without a Retry-After to wait at least a minute.
RATE_LIMIT_WAIT = 60.0

_HINTS = {
    401: "the token was refused: check that it is set, valid and not expired",
    403: "the token lacks a permission this call needs",
    404: "not found, or not visible to the token",
}


class ForgeApi:
    """A forge's REST API in the verbs its sources use; every failure is an
    ApprovalSourceError."""

    def __init__(self, client: HttpClient) -> None:
        self.http = client

    def __repr__(self) -> str:
        return f"ForgeApi({self.http!r})"

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.http.json(self.http.request("GET", path, params=params))

    def get_or_none(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        missing: Collection[int] = (404,),
    ) -> Any:
        """The JSON answer, or None when the status is one of `missing`."""
        resp = self.http.request("GET", path, params=params, ok=(200, *missing))
        return None if resp.status_code in missing else self.http.json(resp)

    def send(
        self, method: str, path: str, body: Any, *, ok: Collection[int] = (200, 201)
    ) -> httpx.Response:
        return self.http.request(method, path, json=body, ok=ok)

    def paginate(self, path: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Every item of a list endpoint, 100 a page (the most either forge gives)."""
        return self.http.paginate(path, {"per_page": 100, **(params or {})})


def forge_api(
    name: str,
    base_url: str,
    *,
    headers: Mapping[str, str],
    token: str,
    deadline: float = DEFAULT_DEADLINE,
    max_retries: int = DEFAULT_MAX_RETRIES,
    max_wait: float = DEFAULT_MAX_WAIT,
    backoff: float = 1.0,
    sleep: Sleep = time.sleep,
    clock: Clock = time.time,
    rng: Rng = random.random,
    env: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
    register: Register = to_backstop,
) -> ForgeApi:
    """The `name` API at `base_url`; `token` is scrubbed from every message, and is
    `register`'s (the session's redactor's) from here on."""
    client = HttpClient(
        label=f"{name} API",
        base_url=base_url,
        headers=headers,
        secrets=[token],
        deadline=deadline,
        deadline_source=TIMEOUT_ENV,
        retry=Retry(
            retries=max(0, max_retries),
            backoff=backoff,
            retry_after_cap=None,  # a long wait is refused by max_wait, not cut short
            max_wait=max(0.0, max_wait),
            rate_limit_wait=RATE_LIMIT_WAIT,
        ),
        error=ApprovalSourceError,
        explain=_explainer(f"{name} API"),
        env=env,
        sleep=sleep,
        clock=clock,
        rng=rng,
        transport=transport,
        register=register,
    )
    return ForgeApi(client)


def _explainer(label: str) -> Explain:
    def explain(f: Failure) -> tuple[str, str | None]:
        where = f"{f.method} {httpx.URL(f.target).path or f.target}"
        problem = f.problem
        if f.exception is not None and not f.deadline:
            problem = f"{type(f.exception).__name__}: {problem}"
        if f.kind == "status" and f.response is not None:
            return _status(label, where, f.response)
        if f.kind == "exhausted":
            tries = plural(f.attempts, "attempt")
            note = f" ({f.note})" if f.note else ""
            return f"{label}: {where}: {problem}{note}; gave up after {tries}", None
        if f.kind == "unsafe":
            note = f"; {f.note}" if f.note else ""
            return (
                f"{label}: {where}: {problem} (not retried: it may have been applied{note})",
                None,
            )
        return f"{label}: {where}: {problem}", None

    return explain


def _status(label: str, where: str, resp: httpx.Response) -> tuple[str, str | None]:
    status = resp.status_code
    text = f"{where} answered {status} {resp.reason_phrase}".rstrip()
    msg = server_message(resp)
    if msg:
        text += f": {msg}"
    hint = _HINTS.get(status)
    if 300 <= status < 400:
        hint = f"the API redirected to {resp.headers.get('location', '?')}; fix the URL"
    return f"{label}: {text}", hint


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
