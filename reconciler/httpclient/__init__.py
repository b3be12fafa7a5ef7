"""The HTTP client every forge and provider uses: retries, rate limits, scrubbed
errors, and a total deadline per request.

Why one module: each API client used to carry its own retry loop, with different caps
and masks, and none bounded a request as a whole. httpx's timeouts are per operation,
so a server sending one byte every 0.8 s kept a request with a 1 s timeout alive for
as long as it liked (and with it an environment's lock). Here every attempt runs under
a `Deadline` that bounds connect + send + every read, headers included
(`transport.DeadlineTransport`); hitting it is an error naming the request and the
limit.

Writing a provider on it:

    from reconciler.errors import ProviderError
    from reconciler.httpclient import HttpClient, Retry

    client = HttpClient(
        label=f"provider {name!r}",              # starts every error message
        base_url="https://api.example.com/v2",   # a relative target joins onto it
        headers={"Authorization": f"Bearer {token}"},  # or auth=(user, password)
        secrets=[token],                         # scrubbed from every message
        deadline=30.0,                           # seconds for one whole attempt
        deadline_source="config.timeoutSeconds", # named when a deadline passes
        retry=Retry(retries=4),                  # see Retry for every knob
        error=ProviderError,                     # what every failure raises
        auth_hint="check the token in HF_TOKEN", # added to a 401/403 message
    )
    resp = client.request("PUT", f"endpoint/{ns}/{name}", json=body, ok=(200, 201))
    obj = client.json_object(resp)               # or client.json(resp)
    if client.request("GET", url, ok=(200, 404)).status_code == 404: ...
    raise client.invalid(resp, "200 answer has no `id`")
    client.close()                               # or `with HttpClient(...) as client:`

`request(method, target, *, params, json, content, headers, ok=(200,), idempotent)`
returns the answer once its status is in `ok`, and raises `error(message)` otherwise:

- Retried whatever the method: a request that never left (connection refused, a
  deadline passed while connecting: nothing was sent), 408, 429, and a 403 that is a
  rate limit (`Retry-After`, a spent `x-ratelimit-remaining`, or "rate limit" in its
  message), and any status in `Retry.statuses` (an API's own "busy, try again").
- Retried only when idempotent (GET, HEAD, OPTIONS, PUT, DELETE, or
  `idempotent=True` for a POST the API makes safe, e.g. one that answers 409 on a
  repeat): other transport failures (reset, closed unanswered, a deadline passed
  while sending or waiting) and 5xx but 501/505. A POST whose answer was lost may
  have been applied, so it is reported, not repeated.
- Never retried: an untrusted TLS certificate (waiting does not make it trusted).
- Waits: `Retry-After` (seconds or an HTTP date) or a rate-limit reset, honoured in
  full (a wait cut short lands inside the server's window and burns a retry;
  `Retry.retry_after_cap` can still clamp it); else exponential backoff with full
  jitter. At most `Retry.retries` retries and `Retry.max_wait` seconds of waiting in
  total, and no wait reaching past the run's deadline (`with wait_deadline(...)`, set
  by the executor): such a wait fails the request at once, saying how long the server
  asked for and which limit it reaches past. Each wait is logged (`http.retry`, with
  `wait` and `why`).
- Messages: `"{label} ({METHOD} {url}): {problem}"`, e.g. `provider 'x' (POST
  https://…/deployments): 503 Service Unavailable after 5 attempts`, or `… 400 Bad
  Request: <the server's own message>`, or `… no answer within 10s after 1 attempt
  (the total deadline per request, config.timeoutSeconds)`. Pass `explain` to word
  them otherwise (the forges do). Every message is scrubbed of `secrets`, of
  `auth`'s password and of every value registered with `reconciler.log`.

Tests inject `sleep`, `clock` (for `Retry-After` dates and rate-limit resets) and
`rng` (the jitter: `lambda: 1.0` waits the full backoff). The deadline runs on the
real monotonic clock: it bounds real sockets. `transport` replaces the network: an
`httpx.MockTransport` answers in-process, and `httpclient.testing.deadline_passes`
fails a request as a passed deadline would (see `reconciler.httpclient.testing`).
"""

from __future__ import annotations

from reconciler.httpclient.client import (
    IDEMPOTENT,
    Clock,
    Explain,
    Failure,
    FailureKind,
    HttpClient,
    Retry,
    Rng,
    Secret,
    Sleep,
    WaitDeadline,
    current_wait_deadline,
    describe,
    plural,
    rate_limit_reset,
    retry_after,
    server_message,
    wait_deadline,
)
from reconciler.httpclient.transport import Deadline, DeadlineTransport, within

__all__ = [
    "IDEMPOTENT",
    "Clock",
    "Deadline",
    "DeadlineTransport",
    "Explain",
    "Failure",
    "FailureKind",
    "HttpClient",
    "Retry",
    "Rng",
    "Secret",
    "Sleep",
    "WaitDeadline",
    "current_wait_deadline",
    "describe",
    "plural",
    "rate_limit_reset",
    "retry_after",
    "server_message",
    "wait_deadline",
    "within",
]
