"""A notification receiver: a real HTTP server on 127.0.0.1 that keeps every POST it
gets (apprise's `json://host:port/path` posts `{"version", "title", "message", "type"}`
to `http://host:port/path`). `fail = True` makes it answer 500 (a broken target)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class HookReceiver:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.fail = False
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Self:
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"raw": raw.decode("utf-8", "replace")}
                with hooks._lock:
                    hooks.posts.append({"path": self.path, **body})
                self.send_response(500 if hooks.fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str = "hook") -> str:
        """The apprise URL of this receiver."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"json://{host!s}:{port}/{path}"

    def received(self, path: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [p for p in self.posts if path is None or p["path"] == f"/{path}"]

    def wait_for(
        self, check: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received()
            if check(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"the receiver did not get what was expected: {self.received()}")
