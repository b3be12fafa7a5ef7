"""An httpx transport whose every socket wait is clamped to the request's deadline.

httpx's timeouts are per operation: a read timeout of 1 s restarts with every byte, so
a server that sends one byte every 0.8 s holds a request for as long as it likes. Here
a `Deadline`, made current with `within(deadline)`, bounds the whole exchange: the
network backend gives each connect, TLS handshake, write and read only the time that
is left, and fails it at once when none is. Nothing of httpx is patched: this is a
`httpcore.NetworkBackend` under a `httpcore.ConnectionPool`, wrapped as an
`httpx.BaseTransport`.

Not bounded: the system resolver's DNS lookup, and a connect that tries several
addresses gives each of them the time left (the next write then fails at once).

Proxies come from the environment mapping given (`HTTP_PROXY`, `HTTPS_PROXY`,
`ALL_PROXY`, `NO_PROXY`, either case), as httpx itself would take them from
`os.environ`; SOCKS proxies are refused with a clear error.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

import httpcore
import httpx

Phase = Literal["connect", "send", "answer"]
_CHUNK = 64 * 1024

_current: ContextVar[Deadline | None] = ContextVar("reconciler_http_deadline", default=None)


class Deadline:
    """The time one request may take, connect to last byte, and how far it got."""

    __slots__ = ("at", "hit", "limit", "phase", "received", "sent")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.at = time.monotonic() + limit
        #: Where the exchange was when the deadline passed (None: it did not).
        self.hit: Phase | None = None
        self.phase: Phase = "connect"
        self.sent = 0
        self.received = 0

    def left(self) -> float:
        return self.at - time.monotonic()


def current_deadline() -> Deadline | None:
    """The deadline bounding this thread's request now, if any."""
    return _current.get()


@contextmanager
def within(deadline: Deadline) -> Iterator[Deadline]:
    """Make `deadline` bound every socket wait of this thread's requests until exit."""
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        _current.reset(token)


def _clamp(
    timeout: float | None, phase: Phase, expired: type[httpcore.TimeoutException]
) -> tuple[float | None, Deadline | None]:
    """The timeout to use now, and the deadline when it is what limits the wait."""
    d = _current.get()
    if d is None:
        return timeout, None
    d.phase = phase
    left = d.left()
    if left <= 0:
        d.hit = phase
        raise expired(f"the deadline of {d.limit:g}s has passed")
    if timeout is None or left <= timeout:
        return left, d
    return timeout, None


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        t, limiting = _clamp(timeout, "answer", httpcore.ReadTimeout)
        try:
            data = self._inner.read(max_bytes, t)
        except httpcore.TimeoutException:
            if limiting is not None:
                limiting.hit = "answer"
            raise
        d = _current.get()
        if d is not None:
            d.received += len(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # In chunks, so a peer that reads slowly cannot stretch one big send.
        for start in range(0, len(buffer), _CHUNK):
            chunk = buffer[start : start + _CHUNK]
            t, limiting = _clamp(timeout, "send", httpcore.WriteTimeout)
            try:
                self._inner.write(chunk, t)
            except httpcore.TimeoutException:
                if limiting is not None:
                    limiting.hit = "send"
                raise
            d = _current.get()
            if d is not None:
                d.sent += len(chunk)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        t, limiting = _clamp(timeout, "connect", httpcore.ConnectTimeout)
        try:
            return _Stream(self._inner.start_tls(ssl_context, server_hostname, t))
        except httpcore.TimeoutException:
            if limiting is not None:
                limiting.hit = "connect"
            raise

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        t, limiting = _clamp(timeout, "connect", httpcore.ConnectTimeout)
        try:
            inner = self._inner.connect_tcp(host, port, t, local_address, socket_options)
        except httpcore.TimeoutException:
            if limiting is not None:
                limiting.hit = "connect"
            raise
        return _Stream(inner)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        t, _ = _clamp(timeout, "connect", httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, t, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


#: httpcore's exceptions as httpx's, most specific first (what httpx's own transport does).
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _as_httpx(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        for theirs, ours in _EXCEPTIONS:
            if isinstance(e, theirs):
                raise ours(str(e), request=request) from e
        raise


class _Body(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes], request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx(self._request):
            yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def proxies_from(env: Mapping[str, str]) -> dict[str, str]:
    """`{"http": url, "https": url, "all": url, "no": hosts}` from `*_PROXY` variables;
    the lower-case name wins, as in urllib and httpx."""
    found: dict[str, str] = {}
    for lower_wins in (False, True):
        for key, value in env.items():
            if value and key.lower().endswith("_proxy") and (key.islower() == lower_wins):
                found[key.lower().removesuffix("_proxy")] = value
    return found


def bypassed(url: httpx.URL, no_proxy: str) -> bool:
    """Whether `NO_PROXY` (`*`, hosts, `.domain` suffixes, `host:port`) covers `url`."""
    host = url.host.lower()
    default = {"http": 80, "https": 443}.get(url.scheme)
    here = str(url.port or default or "")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, port = entry.partition(":") if entry.count(":") == 1 else (entry, "", "")
        if port and port != here:
            continue
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


class DeadlineTransport(httpx.BaseTransport):
    """HTTP/1.1 over connection pools whose sockets honour the current `Deadline`.

    One pool per proxy and per kind of origin: plain HTTP origins get a pool without
    TLS, so a client that never speaks HTTPS never loads the CA bundle (about 20 ms).
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        limits: httpx.Limits | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._limits = limits or httpx.Limits(max_connections=16, max_keepalive_connections=8)
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._backend = _Backend()
        self._proxies = proxies_from(env or {})
        self._lock = threading.Lock()
        self._pools: dict[tuple[str | None, bool], httpcore.ConnectionPool] = {}

    def _pool(self, url: httpx.URL) -> httpcore.ConnectionPool:
        proxy = self._proxy_for(url)
        key = (proxy, url.scheme != "http")  # not plain HTTP: TLS, or refused by httpcore
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = self._make_pool(*key)
            return pool

    def _proxy_for(self, url: httpx.URL) -> str | None:
        if not self._proxies or bypassed(url, self._proxies.get("no", "")):
            return None
        return self._proxies.get(url.scheme) or self._proxies.get("all")

    def _make_pool(self, proxy: str | None, tls: bool) -> httpcore.ConnectionPool:
        if tls and self._ssl is None:
            self._ssl = httpx.create_ssl_context(verify=self._verify)
        common: dict[str, Any] = {
            # None for plain HTTP origins: no connection to them is TLS (the TLS to an
            # HTTPS proxy uses `proxy_ssl_context`).
            "ssl_context": self._ssl if tls else None,
            "max_connections": self._limits.max_connections,
            "max_keepalive_connections": self._limits.max_keepalive_connections,
            "keepalive_expiry": self._limits.keepalive_expiry,
            "network_backend": self._backend,
        }
        if proxy is None:
            return httpcore.ConnectionPool(**common)
        p = httpx.Proxy(proxy)
        if p.url.scheme not in ("http", "https"):
            raise httpx.ProxyError(f"proxy {p.url.scheme}://… is not supported (http or https)")
        return httpcore.HTTPProxy(
            proxy_url=httpcore.URL(
                scheme=p.url.raw_scheme, host=p.url.raw_host, port=p.url.port, target=b"/"
            ),
            proxy_auth=p.raw_auth,
            proxy_headers=p.headers.raw,
            proxy_ssl_context=p.ssl_context,
            **common,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx(request):
            resp = self._pool(request.url).handle_request(core)
        assert isinstance(resp.stream, Iterable)
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_Body(resp.stream, request),
            extensions=resp.extensions,
        )

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
