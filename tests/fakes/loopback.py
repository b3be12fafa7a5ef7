"""What the vendor stand-ins share: a threaded HTTP server on 127.0.0.1 that records
every request (never its Authorization header), answers injected faults first, and
hands the rest to the subclass's `route`.

    class FakeVendor(LoopbackServer):
        def route(self, req: Request) -> Answer: ...

    with FakeVendor() as api:
        api.fail_next(429, retry_after=1)       # the next request gets a 429
        api.fail_next(409, body={...}, method="PUT", times=2)
        api.fail_next(LOST, method="POST")      # handled, then hung up on: the answer is lost
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import httpx

#: A "status" for `fail_next`: handle the request, then close without answering.
LOST = 0


@dataclass
class Request:
    """One request as the server saw it (the Authorization header is never kept)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any
    #: The Authorization header's value, for the route's own check; not in the repr.
    authorization: str | None = field(default=None, repr=False)


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fault:
    status: int
    times: int
    body: Any
    headers: dict[str, str]
    method: str | None
    path: str | None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a command killed with -9 mid-request) is what these
        fakes serve on purpose: not an error. Printed, it would land in the captured
        stderr of whatever command runs in the test's process at that moment."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class ThreadedServer:
    """A real HTTP server in a daemon thread; every request goes to `_handle`, which the
    subclass writes. Stopping also shuts kept-alive connections, which would otherwise
    linger in their handler threads."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.lock = threading.RLock()
        #: Set while stopping: a request waiting on purpose (latency, a hang) wakes up.
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._addr = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> Self:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with owner.lock:
                    owner._conns.add(self.connection)

            def finish(self) -> None:
                with owner.lock:
                    owner._conns.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                owner._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self._stopping.clear()
        self._server = _Server(self._addr, Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def transport(self) -> httpx.MockTransport:
        """The same fake without a socket, for `HttpClient(transport=...)`: each request
        is written as HTTP/1.1 bytes to the handler this server runs, in the caller's
        thread, and the bytes it writes back are read as the answer. An answer that is
        never written (a dropped connection) fails as on the wire; one that never ends
        (`fakes.slow`) needs the socket: use `url`."""
        return httpx.MockTransport(self._in_memory)

    def _in_memory(self, request: httpx.Request) -> httpx.Response:
        head = [f"{request.method} {request.url.raw_path.decode('ascii')} HTTP/1.1"]
        head += [f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in request.headers.raw]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + request.read()
        handler = _InMemory(self, raw)
        handler.handle_one_request()
        written = handler.wfile.getvalue()
        if not written:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        answer = http.client.HTTPResponse(_Wire(written))  # type: ignore[arg-type]
        answer.begin()
        return httpx.Response(
            answer.status, headers=answer.getheaders(), content=answer.read(), request=request
        )

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"


class _Wire:
    """What `http.client.HTTPResponse` reads an answer from: the bytes written."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str, *args: Any, **kw: Any) -> io.BytesIO:
        return io.BytesIO(self._data)


class _InMemory(BaseHTTPRequestHandler):
    """The server's request handler, on bytes in memory instead of a connection."""

    protocol_version = "HTTP/1.1"

    def __init__(self, owner: ThreadedServer, raw: bytes) -> None:  # no socket to set up
        self.owner = owner
        self.rfile = io.BytesIO(raw)
        self.wfile = io.BytesIO()
        self.client_address = ("127.0.0.1", 0)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        self.owner._handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


class LoopbackServer(ThreadedServer):
    """A vendor stand-in on 127.0.0.1; subclasses implement `route` under `lock`."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []
        self._faults: deque[_Fault] = deque()
        #: Seconds each answer takes (outside the lock: requests overlap, as on a real
        #: service); benchmarks set it.
        self.latency = 0.0

    # --- test controls ---------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        body: Any = None,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next `times` requests (of `method`, under `path`) with `status`."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        with self.lock:
            self._faults.append(_Fault(status, times, body, headers, method, path))

    def writes(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(r.method, r.path) for r in self.requests if r.method != "GET"]

    # --- the subclass's part ---------------------------------------------------------

    def route(self, req: Request) -> Answer:
        raise NotImplementedError

    # --- plumbing --------------------------------------------------------------------

    def _fault(self, req: Request) -> _Fault | None:
        with self.lock:
            for f in self._faults:
                if (f.method in (None, req.method)) and (
                    f.path is None or req.path.startswith(f.path)
                ):
                    f.times -= 1
                    if f.times <= 0:
                        self._faults.remove(f)
                    return f
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        req = Request(
            method=h.command,
            path=parts.path,
            query={k: v[-1] for k, v in parse_qs(parts.query).items()},
            headers={k.lower(): v for k, v in h.headers.items() if k.lower() != "authorization"},
            body=body,
            authorization=h.headers.get("Authorization"),
        )
        with self.lock:
            self.requests.append(req)
        if self.latency:
            time.sleep(self.latency)
        fault = self._fault(req)
        if fault is not None and fault.status != LOST:
            answer = Answer(fault.status, fault.body, dict(fault.headers))
        else:
            with self.lock:
                answer = self.route(req)
        if fault is not None and fault.status == LOST:
            h.close_connection = True  # the work is done; the answer never leaves
            return
        self._send(h, answer)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, answer: Answer) -> None:
        data = b"" if answer.body is None else json.dumps(answer.body).encode()
        try:
            h.send_response(answer.status)
            if data:
                h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in answer.headers.items():
                h.send_header(k, v)
            h.end_headers()
            if data:
                h.wfile.write(data)
        except OSError:
            h.close_connection = True


def copy(data: Any) -> Any:
    """A deep copy through JSON (what a client would see)."""
    return json.loads(json.dumps(data))


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Nested mappings merged, anything else replaced (a partial PUT)."""
    out = dict(base)
    for k, v in over.items():
        cur = out.get(k)
        out[k] = merge(cur, v) if isinstance(v, Mapping) and isinstance(cur, Mapping) else v
    return out
