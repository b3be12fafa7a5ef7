"""In-process answers for `HttpClient(transport=...)`: an API's behaviour (retries,
rate limits, messages, deadlines) tested without a server.

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/slow":
            deadline_passes(request, received=10)  # as a server dripping bytes would
        return httpx.Response(200, json={"ok": True})

    client = HttpClient(label="api", base_url="https://api.test", transport=answering(answer))

What only a socket shows (a server that drips bytes, a connection reset, TLS) is
tested against the loopback servers in tests/fakes/, which speak the same APIs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import httpx

from reconciler.httpclient.transport import Phase, current_deadline

Handler = Callable[[httpx.Request], httpx.Response]

_TIMEOUTS: dict[Phase, type[httpx.TimeoutException]] = {
    "connect": httpx.ConnectTimeout,
    "send": httpx.WriteTimeout,
    "answer": httpx.ReadTimeout,
}


def answering(handler: Handler) -> httpx.MockTransport:
    """A transport on which `handler` answers every request, in the caller's thread."""
    return httpx.MockTransport(handler)


def deadline_passes(request: httpx.Request, phase: Phase = "answer", received: int = 0) -> NoReturn:
    """Fail the request as `DeadlineTransport` does when its total deadline passes in
    `phase`, having received `received` bytes of the answer: called from a handler."""
    deadline = current_deadline()
    if deadline is None:
        raise RuntimeError("deadline_passes outside a request of HttpClient")
    deadline.phase = deadline.hit = phase
    if phase != "connect":
        deadline.sent = max(deadline.sent, len(request.content) or 1)
    deadline.received = received
    raise _TIMEOUTS[phase](f"the deadline of {deadline.limit:g}s has passed", request=request)
