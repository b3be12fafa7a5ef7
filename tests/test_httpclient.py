"""The shared HTTP client against real servers on 127.0.0.1: retry classification,
backoff with injected sleep and jitter, Retry-After, wait limits, scrubbing, proxies,
and the total deadline that a server dripping one byte every 0.8 s cannot stretch."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import pytest
import structlog
from fakes.deploy_api import FakeDeployApi

from reconciler.errors import ProviderError, ReconcilerError
from reconciler.httpclient import HttpClient, Retry, WaitDeadline, retry_after, wait_deadline
from reconciler.httpclient.transport import bypassed, proxies_from

TOKEN = "tok-httpclient-7Hq2Zx"
NOW = 1_800_000_000.0
T = TypeVar("T")


@pytest.fixture
def api() -> Iterator[FakeDeployApi]:
    with FakeDeployApi(hang_seconds=5.0) as server:
        yield server


class Made:
    """Clients made by a test, their waits recorded, all closed at the end."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.clients: list[HttpClient] = []

    def __call__(self, **kw: Any) -> HttpClient:
        retry = Retry(**kw.pop("retry", {}))
        opts: dict[str, Any] = {
            "label": "test api",
            "secrets": [TOKEN],
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "sleep": self.sleeps.append,
            "clock": lambda: NOW,
            "deadline": 5.0,
            "error": ProviderError,
            **kw,
        }
        c = HttpClient(retry=retry, **opts)
        self.clients.append(c)
        return c


@pytest.fixture
def make() -> Iterator[Made]:
    m = Made()
    yield m
    for c in m.clients:
        c.close()


def deployments(api: FakeDeployApi) -> str:
    return f"{api.url}/api/v1/deployments"


def body(name: str = "chat") -> dict[str, str]:
    return {"name": name, "environment": "dev", "model": "m"}


def finishes(fn: Callable[[], T], within: float = 30.0) -> T | BaseException:
    """`fn()`'s result or exception; fails the test if it is still running after
    `within` seconds (what a request without a total deadline does here)."""
    out: list[T | BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(within)
    assert out, f"still running after {within:g}s: the deadline did not bound the request"
    return out[0]


# --- backoff and Retry-After -----------------------------------------------------------


def test_backoff_doubles_with_full_jitter_through_the_injected_sleep(
    api: FakeDeployApi, make: Made
) -> None:
    api.fail_next(503, times=3)
    c = make(rng=lambda: 0.5, retry={"backoff": 0.5})
    assert c.request("GET", deployments(api)).status_code == 200
    assert make.sleeps == [0.25, 0.5, 1.0]  # half of 0.5, 1, 2: the jitter scales the ceiling


def test_backoff_is_capped(api: FakeDeployApi, make: Made) -> None:
    api.fail_next(500, times=3)
    c = make(rng=lambda: 1.0, retry={"backoff": 10.0, "backoff_cap": 15.0})
    c.request("GET", deployments(api))
    assert make.sleeps == [10.0, 15.0, 15.0]


def test_real_jitter_stays_under_the_ceiling(api: FakeDeployApi, make: Made) -> None:
    api.fail_next(502, times=4)
    make(retry={"backoff": 1.0}).request("GET", deployments(api))
    ceilings = [1.0, 2.0, 4.0, 8.0]
    assert len(make.sleeps) == 4
    assert all(0 <= s <= c for s, c in zip(make.sleeps, ceilings, strict=True))


def test_retry_after_seconds_and_date_are_honoured_and_capped(
    api: FakeDeployApi, make: Made
) -> None:
    api.fail_next(429, retry_after=7)
    api.fail_next(503, retry_after=formatdate(NOW + 12, usegmt=True))
    api.fail_next(429, retry_after=3600)
    make(retry={"retry_after_cap": 30.0}).request("GET", deployments(api))
    assert make.sleeps == [7.0, 12.0, 30.0]


def test_a_wait_over_the_total_limit_gives_up_without_waiting(
    api: FakeDeployApi, make: Made
) -> None:
    api.fail_next(429, retry_after=500)
    c = make(retry={"retry_after_cap": None, "max_wait": 120.0})
    with pytest.raises(ProviderError) as e:
        c.request("GET", deployments(api))
    assert (
        "retrying needs a wait of 500s (the server's Retry-After: 500), over the limit of "
        "120s in total" in e.value.message
    )
    assert make.sleeps == []


def test_a_long_retry_after_is_honoured_in_full_and_logged_with_its_reason(
    api: FakeDeployApi, make: Made
) -> None:
    """A wait cut short (it used to be cut to 30 s) lands inside the server's window."""
    api.fail_next(429, retry_after=60)
    with structlog.testing.capture_logs() as logs:
        make().request("GET", deployments(api))
    assert make.sleeps == [60.0]
    (line,) = [e for e in logs if e["event"] == "http.retry"]
    assert line["wait"] == 60.0 and line["why"] == "the server's Retry-After: 60"
    assert line["problem"] == "429 Too Many Requests"


def test_a_wait_past_the_run_deadline_fails_at_once_naming_it(
    api: FakeDeployApi, make: Made
) -> None:
    api.fail_next(429, retry_after=90)
    run = WaitDeadline(lambda: 40.0, "the run deadline of 600 s (--run-timeout)")
    with wait_deadline(run), pytest.raises(ProviderError) as e:
        make().request("GET", deployments(api))
    assert make.sleeps == [] and len(api.requests) == 1
    assert e.value.message.endswith(
        "429 Too Many Requests; retrying needs a wait of 90s (the server's Retry-After: 90), "
        "past the run deadline of 600 s (--run-timeout) (40s left); not waiting"
    )
    api.fail_next(429, retry_after=30)  # within it: waited as asked
    with wait_deadline(run):
        make().request("GET", deployments(api))
    assert make.sleeps == [30.0]


def test_retries_are_bounded(api: FakeDeployApi, make: Made) -> None:
    api.fail_next(503, times=10)
    with pytest.raises(ProviderError) as e:
        make(retry={"retries": 2}).request("GET", deployments(api))
    assert e.value.message == (
        f"test api (GET {deployments(api)}): 503 Service Unavailable after 3 attempts"
    )
    assert len(make.sleeps) == 2 and len(api.requests) == 3


def test_retry_after_parsing() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(" 1.5 ") == 1.5
    assert retry_after("-3") == 0.0
    assert retry_after(formatdate(NOW + 30, usegmt=True), lambda: NOW) == 30.0
    assert retry_after(formatdate(NOW - 30, usegmt=True), lambda: NOW) == 0.0
    assert retry_after("soon") is None
    assert retry_after("inf") is None
    assert retry_after(None) is None


# --- what is retried -------------------------------------------------------------------


def test_a_post_is_not_repeated_after_5xx_or_a_lost_answer(api: FakeDeployApi, make: Made) -> None:
    c = make()
    api.fail_next(502, method="POST")
    with pytest.raises(ProviderError, match="502 Bad Gateway"):
        c.request("POST", deployments(api), json=body(), ok=(201,))
    api.fail_next("lost", method="POST")  # created, but the answer never arrives
    with pytest.raises(ProviderError) as e:
        c.request("POST", deployments(api), json=body(), ok=(201,))
    assert "not retried: it may have been applied" in e.value.message
    assert make.sleeps == [] and api.create_count[("dev", "chat")] == 1


def test_a_post_is_retried_when_refused_unapplied(api: FakeDeployApi, make: Made) -> None:
    api.fail_next(429, retry_after=2, method="POST")
    api.fail_next(408, method="POST")
    resp = make(rng=lambda: 1.0).request("POST", deployments(api), json=body(), ok=(201,))
    assert resp.status_code == 201 and make.sleeps == [2.0, 1.0]
    assert api.create_count[("dev", "chat")] == 1


def test_a_post_is_retried_when_nothing_was_sent(make: Made) -> None:
    with FakeDeployApi() as gone:
        url = deployments(gone)
    with pytest.raises(ProviderError) as e:
        make(retry={"retries": 2}).request("POST", url, json=body(), ok=(201,))
    assert e.value.message == f"test api (POST {url}): connection refused after 3 attempts"
    assert len(make.sleeps) == 2


def test_an_apis_own_try_again_status_is_retried(api: FakeDeployApi, make: Made) -> None:
    api.fail_next(409, retry_after=3, body={"error": {"code": "RequestConflict"}})
    c = make(retry={"statuses": frozenset({409})})
    assert c.request("POST", deployments(api), json=body(), ok=(201,)).status_code == 201
    assert make.sleeps == [3.0]
    api.fail_next(409)
    with pytest.raises(ProviderError, match="409 Conflict"):  # not for other clients
        make().request("POST", deployments(api), json=body("other"), ok=(201,))


def test_idempotent_post_is_retried_after_a_lost_answer(api: FakeDeployApi, make: Made) -> None:
    api.fail_next("lost", method="POST")
    resp = make().request("POST", deployments(api), json=body(), ok=(201, 409), idempotent=True)
    assert resp.status_code == 409  # the first attempt created it: the caller adopts it
    assert api.create_count[("dev", "chat")] == 1 and len(make.sleeps) == 1


def test_rate_limited_403_is_retried_a_plain_403_is_not(api: FakeDeployApi, make: Made) -> None:
    c = make(retry={"rate_limit_wait": 60.0, "retry_after_cap": None})
    api.fail_next(403, body={"message": "You have exceeded a secondary rate limit"})
    c.request("GET", deployments(api))
    assert make.sleeps == [60.0]
    api.fail_next(403, body={"message": "Resource not accessible"})
    with pytest.raises(ProviderError, match="403 Forbidden: Resource not accessible"):
        c.request("GET", deployments(api))
    assert make.sleeps == [60.0]


def test_answers_in_ok_are_returned_others_raise_with_the_server_message(
    api: FakeDeployApi, make: Made
) -> None:
    c = make(auth_hint="check the token in X_TOKEN")
    missing = c.request("GET", f"{api.url}/api/v1/deployments/nope", ok=(200, 404))
    assert missing.status_code == 404
    api.fail_next(401, body={"error": {"message": "token expired"}})  # ARM's shape
    with pytest.raises(ProviderError) as e:
        c.request("GET", deployments(api))
    assert e.value.message.endswith("401 Unauthorized (check the token in X_TOKEN): token expired")


def test_secrets_never_appear_in_errors_or_reprs(api: FakeDeployApi, make: Made) -> None:
    c = make(retry={"retries": 0})
    api.fail_next(422, body={"error": f"bad token {TOKEN}"})
    with pytest.raises(ProviderError) as e:
        c.request("POST", deployments(api), json=body(), ok=(201,))
    texts = [e.value.message, str(e.value), repr(c), repr(vars(c))]
    assert all(TOKEN not in t for t in texts) and "bad token (sensitive)" in e.value.message


def test_json_helpers_raise_the_clients_error(api: FakeDeployApi, make: Made) -> None:
    c = make()
    resp = c.request("GET", deployments(api))
    assert c.json_object(resp) == {"items": []}
    api.fail_next(200, body=["not", "an", "object"])
    listed = c.request("GET", deployments(api))
    with pytest.raises(ProviderError, match="200 answer is not a JSON object"):
        c.json_object(listed)
    assert c.json(listed) == ["not", "an", "object"]


# --- the total deadline ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("drip-headers", "the answer did not complete within 1s"),
        ("drip-body", "the answer did not complete within 1s"),
        ("hang", "no answer within 1s"),
    ],
)
def test_the_deadline_bounds_the_whole_answer(
    api: FakeDeployApi, make: Made, mode: str, problem: str
) -> None:
    """One byte every 0.8 s keeps every read under a 1 s read timeout: only a total
    deadline ends it."""
    api.fail_next(mode)  # type: ignore[arg-type]
    c = make(deadline=1.0, deadline_source="config.timeoutSeconds", retry={"retries": 0})
    err = finishes(lambda: c.request("GET", deployments(api)))
    assert isinstance(err, ProviderError)
    assert err.message == (
        f"test api (GET {deployments(api)}): {problem} after 1 attempt "
        "(1s is the total deadline per request, set by config.timeoutSeconds)"
    )


def test_an_idempotent_request_is_retried_after_its_deadline(
    api: FakeDeployApi, make: Made
) -> None:
    api.fail_next("drip-body")
    c = make(deadline=1.0)
    resp = finishes(lambda: c.request("GET", deployments(api)))
    assert isinstance(resp, httpx.Response) and resp.status_code == 200
    assert len(make.sleeps) == 1


def test_a_post_past_its_deadline_is_not_repeated(api: FakeDeployApi, make: Made) -> None:
    api.fail_next("drip-headers", method="POST")
    c = make(deadline=1.0)
    err = finishes(lambda: c.request("POST", deployments(api), json=body(), ok=(201,)))
    assert isinstance(err, ProviderError)
    assert "the answer did not complete within 1s (not retried: it may have been applied; " in (
        err.message
    )
    assert make.sleeps == []


def test_the_deadline_bounds_sending_to_a_peer_that_does_not_read(make: Made) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/upload"
        held: list[socket.socket] = []
        threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True).start()
        c = make(deadline=1.0, retry={"retries": 0})
        big = b"x" * (64 * 1024 * 1024)  # more than loopback buffers hold
        err = finishes(lambda: c.request("PUT", url, content=big))
        for s in held:
            s.close()
    assert isinstance(err, ProviderError)
    assert f"(PUT {url}): could not send the request within 1s after 1 attempt" in err.message


# --- proxies from the environment given --------------------------------------------------


class _Proxy:
    """A forward proxy that answers every request itself and records its target."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.targets.append(self.path)
                data = b'{"via": "proxy"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_http_proxy_and_no_proxy_come_from_the_env_given(api: FakeDeployApi, make: Made) -> None:
    proxy = _Proxy()
    try:
        via = make(env={"HTTP_PROXY": proxy.url}).request("GET", deployments(api))
        assert via.json() == {"via": "proxy"} and proxy.targets == [deployments(api)]
        direct = make(env={"http_proxy": proxy.url, "NO_PROXY": "localhost,127.0.0.1"})
        assert direct.request("GET", deployments(api)).json() == {"items": []}
        assert proxy.targets == [deployments(api)]
    finally:
        proxy.close()


def test_proxy_variables_and_no_proxy_matching() -> None:
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2", "NO_PROXY": "x"}
    assert proxies_from(env) == {"https": "http://lower:2", "no": "x"}
    url = httpx.URL("https://api.github.com:443/repos")
    assert bypassed(url, "*")
    assert bypassed(url, "example.com, github.com")
    assert bypassed(url, ".github.com")
    assert bypassed(url, "api.github.com:443")
    assert not bypassed(url, "api.github.com:8443")
    assert not bypassed(url, "hub.com,")


def test_a_socks_proxy_is_refused_clearly(make: Made) -> None:
    c = make(env={"ALL_PROXY": "socks5://127.0.0.1:1"}, retry={"retries": 0})
    with pytest.raises(ReconcilerError, match=r"proxy error: proxy socks5://… is not supported"):
        c.request("GET", "http://127.0.0.1:9/x")
