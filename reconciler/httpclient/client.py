"""`HttpClient`: one request = bounded attempts, each under a total deadline.

See the package docstring for how to use it; this module holds the rules.
"""

from __future__ import annotations

import email.utils
import math
import random
import ssl
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC
from functools import cached_property
from typing import Any, Literal

import httpx

from reconciler.errors import ReconcilerError
from reconciler.httpclient.transport import Deadline, DeadlineTransport, within
from reconciler.log import REDACTED, get_logger, redact
from reconciler.redaction import Register, to_backstop

_log = get_logger("reconciler.http")


@dataclass(frozen=True)
class WaitDeadline:
    """An outer deadline no wait between attempts may reach past: the run's. `left`
    says how many seconds remain (its own clock: the executor's monotonic one);
    `name` is how a message names it ("the run deadline of 600 s (--run-timeout)")."""

    left: Callable[[], float]
    name: str


_wait_deadline: ContextVar[WaitDeadline | None] = ContextVar(
    "reconciler_http_wait_deadline", default=None
)


def current_wait_deadline() -> WaitDeadline | None:
    """The outer deadline this thread's waits are bounded by, if any (a provider
    waiting on its own, e.g. for a busy Azure account, honours it too)."""
    return _wait_deadline.get()


@contextmanager
def wait_deadline(deadline: WaitDeadline | None) -> Iterator[None]:
    """Bound every retry wait of this thread's requests by `deadline` until exit."""
    token = _wait_deadline.set(deadline)
    try:
        yield
    finally:
        _wait_deadline.reset(token)


Sleep = Callable[[float], None]
Clock = Callable[[], float]
#: Returns a float in [0, 1): the jitter. `random.random` unless a test fixes it.
Rng = Callable[[], float]

#: Methods whose repetition cannot do more than doing them once.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: 501 and 505 will not get better by asking again.
_NOT_RETRIED_5XX = frozenset({501, 505})
_MAX_MESSAGE = 200


@dataclass(frozen=True)
class Retry:
    """How often and how long to retry.

    Waits are `Retry-After` (seconds or an HTTP date) or a rate-limit reset when the
    server gives one, honoured in full unless `retry_after_cap` clamps them (a wait cut
    short lands inside the server's window and only burns a retry); otherwise
    exponential backoff with full jitter, uniform(0, min(backoff_cap, backoff × 2ⁿ)).
    A wait that would take the total waited past `max_wait`, or reach past the run's
    deadline (`wait_deadline`), gives up at once instead, saying so.
    """

    retries: int = 4
    backoff: float = 0.5
    backoff_cap: float = 30.0
    retry_after_cap: float | None = None
    max_wait: float | None = None
    #: A rate limit with no hint of how long waits this × 2ⁿ (GitHub asks for at
    #: least a minute); None: the usual backoff.
    rate_limit_wait: float | None = None
    #: More statuses that mean "refused, not applied: try again" for this API, retried
    #: whatever the method (e.g. 409 for Azure's RequestConflict on a busy account).
    statuses: frozenset[int] = frozenset()


FailureKind = Literal["status", "exhausted", "unsafe", "wait", "invalid", "permanent"]


@dataclass(frozen=True)
class Failure:
    """Why a request failed, for an `Explain` to word; the client scrubs the words.

    kind: `status` (an answer outside `ok`, not retried), `exhausted` (still failing
    after every attempt), `unsafe` (a transport failure of a request that may have
    been applied, so not retried), `wait` (retrying needs a longer wait than
    allowed; `problem` says so), `invalid` (an answer the caller could not use),
    `permanent` (no answer, for a reason waiting cannot mend: an untrusted certificate).
    """

    kind: FailureKind
    method: str
    url: str
    target: str
    problem: str
    attempts: int = 1
    response: httpx.Response | None = None
    exception: Exception | None = None
    #: The request's total deadline passed (`problem` says where it was).
    deadline: bool = False
    #: What the deadline is and what sets it, when it passed: "1s is the total
    #: deadline per request, set by config.timeoutSeconds".
    note: str = ""

    @property
    def request(self) -> str:
        return f"{self.method} {self.url}"


#: (message, details) for a failure; the client scrubs both and raises `error`.
Explain = Callable[[Failure], tuple[str, str | None]]


class Secret:
    """A value that never shows itself in a repr, str or f-string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def server_message(resp: httpx.Response) -> str:
    """The server's own explanation, if any, cut to one short line.

    JSON `error` / `message` / `detail` / `title` (also `error.message`, as ARM and
    OpenAI send), an `X-Error-Message` header (Hugging Face), or a text/* body.
    """
    msg: str | None = resp.headers.get("x-error-message")
    try:
        data = resp.json()
    except ValueError:
        data = None
    if msg is None and isinstance(data, dict):
        for key in ("error", "message", "detail", "title"):
            v = data.get(key)
            if isinstance(v, dict):
                v = v.get("message")
            if isinstance(v, str) and v.strip():
                msg = v
                break
    elif msg is None and data is None and resp.headers.get("content-type", "").startswith("text/"):
        msg = resp.text
    if msg is None:
        return ""
    msg = " ".join(msg.split())
    return msg if len(msg) <= _MAX_MESSAGE else msg[: _MAX_MESSAGE - 1] + "…"


def retry_after(value: str | None, clock: Clock = time.time) -> float | None:
    """`Retry-After` in seconds from now (a number or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - clock()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def rate_limit_reset(resp: httpx.Response, clock: Clock = time.time) -> float | None:
    """Seconds until a spent quota resets (`x-ratelimit-*` on GitHub, `ratelimit-*` on
    GitLab: remaining 0 and a reset time in epoch seconds), plus a second of margin."""
    h = resp.headers
    remaining = h.get("x-ratelimit-remaining", h.get("ratelimit-remaining"))
    reset = h.get("x-ratelimit-reset", h.get("ratelimit-reset"))
    if remaining is None or remaining.strip() != "0" or reset is None:
        return None
    try:
        at = float(reset)
    except ValueError:
        return None
    return max(0.0, at - clock()) + 1.0 if math.isfinite(at) else None


def describe(e: Exception, deadline: Deadline | None = None) -> str:
    """A short, value-free account of what went wrong on the wire."""
    if deadline is not None and deadline.hit is not None:
        limit = f"{deadline.limit:g}s"
        if deadline.hit == "connect":
            return f"could not connect within {limit}"
        if deadline.hit == "send":
            return f"could not send the request within {limit}"
        if deadline.received:
            return f"the answer did not complete within {limit}"
        return f"no answer within {limit}"
    if isinstance(e, httpx.PoolTimeout):
        return "no free connection in time"
    if isinstance(e, httpx.ConnectTimeout):
        return "connect timed out"
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    text = str(e).lower()
    if isinstance(e, httpx.ConnectError):
        if "refused" in text:
            return "connection refused"
        if "name or service" in text or "nodename" in text or "getaddrinfo" in text:
            return "host not found"
        untrusted = _untrusted_certificate(e)
        if untrusted is not None:
            why = (untrusted.verify_message or "").strip(" .")
            return "TLS certificate not trusted" + (f" ({why})" if why else "")
        if "[ssl" in text:
            return "TLS handshake failed"
        return "cannot connect"
    if isinstance(e, httpx.ProxyError):
        return f"proxy error: {e}"
    if isinstance(e, httpx.RemoteProtocolError):
        return "connection closed without an answer"
    if "reset" in text:
        return "connection reset"
    return f"transport error ({type(e).__name__})"


def _untrusted_certificate(e: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a connect error (httpx raises it
    from httpcore's, raised from ssl's), if that is what it was."""
    seen: BaseException | None = e
    for _ in range(8):  # a chain is a few links; never follow a cycle for ever
        if seen is None or isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass
class _Broken:
    """An attempt that got no answer."""

    error: Exception
    deadline: Deadline

    @property
    def not_sent(self) -> bool:
        """Surely not applied: no byte of the request left this machine."""
        return self.deadline.sent == 0


class HttpClient:
    """One API: base URL, headers, secrets, deadline and retry policy, set once."""

    def __init__(
        self,
        *,
        label: str,
        base_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | httpx.Auth | None = None,
        secrets: Iterable[str] = (),
        deadline: float = 30.0,
        deadline_source: str | None = None,
        retry: Retry | None = None,
        error: Callable[..., ReconcilerError] = ReconcilerError,
        auth_hint: str | None = None,
        explain: Explain | None = None,
        env: Mapping[str, str] | None = None,
        max_connections: int = 16,
        sleep: Sleep = time.sleep,
        clock: Clock = time.time,
        rng: Rng = random.random,
        transport: httpx.BaseTransport | None = None,
        register: Register = to_backstop,
    ) -> None:
        """`transport` replaces the network (`DeadlineTransport`): an
        `httpx.MockTransport` answers in-process (`httpclient.testing`), so a client's
        behaviour is tested without a server; `env` (proxies) and `max_connections`
        then have nothing to configure."""
        if not deadline > 0:
            raise ValueError("deadline must be positive")
        self.label = label
        self.deadline = float(deadline)
        self.deadline_source = deadline_source
        self.retry = retry or Retry()
        self.auth_hint = auth_hint
        self._error = error
        self._explain = explain or self._default_explain
        self._secrets = [Secret(s) for s in secrets if s]
        if isinstance(auth, tuple) and auth[1]:
            self._secrets.append(Secret(auth[1]))
        #: The secrets and auth header values are the builder's redactor's from here on
        #: (a provider's or forge's, handed down from the session; the default only for
        #: library use).
        register(s.reveal() for s in self._secrets)
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self._base = httpx.URL(base_url.rstrip("/") + "/") if base_url else None
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max(1, max_connections // 2),
        )
        self._client = httpx.Client(
            base_url=self._base or "",
            headers=dict(headers or {}),
            auth=auth,
            timeout=httpx.Timeout(self.deadline),
            follow_redirects=False,
            trust_env=False,
            transport=transport or DeadlineTransport(env=env, limits=limits),
        )

    def __repr__(self) -> str:
        return f"HttpClient({self.label!r}, {str(self._base or '')!r})"

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # --- requests ----------------------------------------------------------------

    def request(
        self,
        method: str,
        target: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        ok: Collection[int] = (200,),
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """The answer, once its status is in `ok`; anything else raises `error`.

        `target` is a URL, or a path joined onto `base_url`. Retried: a request that
        never left (connection refused, a deadline passed while connecting), 408, 429
        and rate-limited 403s, whatever the method; transport failures and 5xx (but
        501/505) only when `idempotent` (default: the method is GET, HEAD, OPTIONS,
        PUT or DELETE), since a POST whose answer was lost may have been applied.
        An untrusted certificate is never retried.
        """
        method = method.upper()
        safe = method in IDEMPOTENT if idempotent is None else idempotent
        fail = _Failing(self, method, target, params)
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            got = self._attempt(method, target, params, json, content, headers)
            if isinstance(got, httpx.Response):
                if got.status_code in ok:
                    return got
                planned = self._status_delay(got, attempt - 1, safe)
                if planned is None:
                    raise fail("status", _status_line(got), attempt, response=got)
                delay, why = planned
                problem, broken = _status_line(got), None
            else:
                problem, broken = describe(got.error, got.deadline), got
                if not safe and not got.not_sent:
                    raise fail("unsafe", problem, attempt, broken=got)
                if _untrusted_certificate(got.error) is not None:
                    raise fail("permanent", problem, attempt, broken=got)
                delay, why = self._backoff(attempt - 1), "backoff"
            if attempt > self.retry.retries:
                raise fail("exhausted", problem, attempt, broken=broken, response=_resp(got))
            if (over := self._over_limit(delay, why, waited)) is not None:
                raise fail("wait", f"{problem}; {over}", attempt, broken=broken)
            _log.warning(
                "http.retry",
                client=self.label,
                request=self.scrub(f"{method} {fail.url}"),
                problem=self.scrub(problem),
                attempt=attempt,
                wait=round(delay, 3),
                why=why,
            )
            self._sleep(delay)
            waited += delay

    def json(self, resp: httpx.Response) -> Any:
        """The answer's JSON; an answer that is not JSON raises `error`."""
        try:
            return resp.json()
        except ValueError:
            raise self.invalid(resp, f"{resp.status_code} answer is not JSON") from None

    def json_object(self, resp: httpx.Response) -> dict[str, Any]:
        """The answer's JSON object; anything else raises `error`."""
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise self.invalid(resp, f"{resp.status_code} answer is not a JSON object")
        return data

    def paginate(
        self, target: str, params: Mapping[str, Any] | None = None, *, max_pages: int = 100
    ) -> list[Any]:
        """Every item of a list endpoint, following `Link: rel="next"` (same origin only)."""
        items: list[Any] = []
        url, query = target, params
        for _ in range(max_pages):
            resp = self.request("GET", url, params=query)
            page = self.json(resp)
            if not isinstance(page, list):
                raise self.invalid(resp, f"expected a list, got {type(page).__name__}")
            items.extend(page)
            nxt = resp.links.get("next", {}).get("url")
            if not nxt:
                return items
            u, here = httpx.URL(nxt), resp.request.url
            if (u.scheme, u.host, u.port) != (here.scheme, here.host, here.port):
                raise self.invalid(resp, f"the next page points at another host ({u.host})")
            url, query = nxt, None
        raise self.invalid(resp, f"more than {max_pages} pages; refusing to go on")

    def invalid(self, resp: httpx.Response, problem: str) -> ReconcilerError:
        """The error for an answer the caller cannot use (raise it)."""
        req = resp.request
        f = Failure("invalid", req.method, str(req.url), str(req.url), problem, response=resp)
        return self.error_for(f)

    def error_for(self, failure: Failure) -> ReconcilerError:
        message, details = self._explain(failure)
        return self._error(self.scrub(message), details=self.scrub(details) if details else None)

    def scrub(self, text: str) -> str:
        """`text` without this client's secrets or any registered one."""
        for s in self._secrets:
            text = text.replace(s.reveal(), REDACTED)
        return redact(text)

    # --- internals ---------------------------------------------------------------

    def _attempt(
        self,
        method: str,
        target: str,
        params: Mapping[str, Any] | None,
        json: Any,
        content: bytes | str | None,
        headers: Mapping[str, str] | None,
    ) -> httpx.Response | _Broken:
        deadline = Deadline(self.deadline)
        with within(deadline):
            try:
                return self._client.request(
                    method, target, params=params, json=json, content=content, headers=headers
                )
            except httpx.TransportError as e:
                return _Broken(e, deadline)
            except httpx.HTTPError as e:  # a body that cannot be decoded, say: not retried
                raise self.error_for(
                    Failure(
                        "invalid",
                        method,
                        str(self._client.build_request(method, target, params=params).url),
                        target,
                        f"request failed ({type(e).__name__})",
                        exception=e,
                    )
                ) from None

    def _backoff(self, attempt: int) -> float:
        r = self.retry
        return self._rng() * min(r.backoff_cap, r.backoff * 2.0**attempt)

    def _hinted(self, seconds: float, why: str) -> tuple[float, str]:
        cap = self.retry.retry_after_cap
        if cap is None or seconds <= cap:
            return seconds, why
        return cap, f"{why}, cut to Retry.retry_after_cap {cap:g}s"

    def _status_delay(
        self, resp: httpx.Response, attempt: int, safe: bool
    ) -> tuple[float, str] | None:
        """How long to wait before retrying this answer, and why (for the log and a
        message); None: do not retry it."""
        status = resp.status_code
        header = resp.headers.get("retry-after")
        hinted = retry_after(header, self._clock)
        asked = f"the server's Retry-After: {header.strip()}" if header is not None else ""
        if status in (403, 429):
            if hinted is None:
                hinted = rate_limit_reset(resp, self._clock)
                asked = "the server's rate-limit reset"
            if hinted is not None:
                return self._hinted(hinted, asked)
            if status == 403 and "rate limit" not in server_message(resp).lower():
                return None
            if self.retry.rate_limit_wait is not None:
                return self._hinted(
                    self.retry.rate_limit_wait * 2.0**attempt, "rate limited, no hint: waiting"
                )
            return self._backoff(attempt), "backoff"
        refused = status == 408 or status in self.retry.statuses
        if refused or (safe and 500 <= status <= 599 and status not in _NOT_RETRIED_5XX):
            if hinted is None:
                return self._backoff(attempt), "backoff"
            return self._hinted(hinted, asked)
        return None

    def _over_limit(self, delay: float, why: str, waited: float) -> str | None:
        """Why waiting `delay` more is not allowed, or None: past `Retry.max_wait` in
        total, or past the run's deadline. Said at once rather than slept on."""
        limit = self.retry.max_wait
        if limit is not None and waited + delay > limit:
            return (
                f"retrying needs a wait of {delay:.0f}s ({why}), over the limit of "
                f"{limit:.0f}s in total"
            )
        outer = _wait_deadline.get()
        if outer is not None and delay > (left := outer.left()):
            return (
                f"retrying needs a wait of {delay:.0f}s ({why}), past {outer.name} "
                f"({max(left, 0.0):.0f}s left); not waiting"
            )
        return None

    def _default_explain(self, f: Failure) -> tuple[str, str | None]:
        head = f"{self.label} ({f.request})"
        if f.kind == "status" and f.response is not None:
            text = f.problem
            if f.response.status_code in (401, 403) and self.auth_hint:
                text += f" ({self.auth_hint})"
            msg = server_message(f.response)
            return f"{head}: {text}: {msg}" if msg else f"{head}: {text}", None
        note = f"; {f.note}" if f.note else ""
        if f.kind == "exhausted":
            tries = plural(f.attempts, "attempt")
            return f"{head}: {f.problem} after {tries}{f' ({f.note})' if f.note else ''}", None
        if f.kind == "unsafe":
            return f"{head}: {f.problem} (not retried: it may have been applied{note})", None
        return f"{head}: {f.problem}", None

    def deadline_note(self) -> str:
        """What the deadline is and what sets it, for a message reporting it passed."""
        where = f", set by {self.deadline_source}" if self.deadline_source else ""
        return f"{self.deadline:g}s is the total deadline per request{where}"


def _status_line(resp: httpx.Response) -> str:
    return f"{resp.status_code} {resp.reason_phrase}".strip()


def _resp(got: httpx.Response | _Broken) -> httpx.Response | None:
    return got if isinstance(got, httpx.Response) else None


@dataclass
class _Failing:
    """Builds the error of one request, with what it knows of it."""

    client: HttpClient
    method: str
    target: str
    params: Mapping[str, Any] | None

    @cached_property
    def url(self) -> str:
        """The full URL, for messages: built only when one is written (building a
        request per request, just in case, was a tenth of a create's client time)."""
        return str(
            self.client._client.build_request(self.method, self.target, params=self.params).url
        )

    def __call__(
        self,
        kind: FailureKind,
        problem: str,
        attempts: int,
        *,
        broken: _Broken | None = None,
        response: httpx.Response | None = None,
    ) -> ReconcilerError:
        hit = broken is not None and broken.deadline.hit is not None
        return self.client.error_for(
            Failure(
                kind,
                self.method,
                self.url,
                self.target,
                problem,
                attempts,
                response=response,
                exception=broken.error if broken else None,
                deadline=hit,
                note=self.client.deadline_note() if hit else "",
            )
        )
