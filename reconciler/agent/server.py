"""The agent's HTTP side: `/healthz` (the loop's liveness), `/readyz` (the state, the
forge and each environment's last pass; both unauthenticated), `/metrics`
(Prometheus text format) and, unless turned off, the dashboard's pages and JSON API
(`reconciler serve`'s) under `/`. The dashboard's token and Host checks guard all of it
but /healthz, /metrics included.

uvicorn runs on a thread of its own on a socket bound before the loop starts, so the
address logged is the one listened on (`--port 0` included) and signals stay with the
main thread, where the loop handles SIGTERM.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from reconciler.agent.metrics import Metrics

#: (HTTP status, JSON document) of /healthz.
Health = Callable[[], tuple[int, dict[str, Any]]]


def make_app(
    metrics: Metrics,
    health: Health,
    dashboard: Starlette | None,
    *,
    ready: Health | None = None,
    token: str | None = None,
    allowed_hosts: Collection[str] | None = None,
) -> Starlette:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import BaseRoute, Mount, Route

    def healthz(request: Request) -> Response:
        status, doc = health()
        return JSONResponse(doc, status, headers={"Cache-Control": "no-store"})

    def readyz(request: Request) -> Response:
        status, doc = (ready or health)()
        return JSONResponse(doc, status, headers={"Cache-Control": "no-store"})

    def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def nothing_here(request: Request) -> Response:
        return PlainTextResponse("the dashboard is off (--no-dashboard)\n", 404)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", prometheus),
        Mount("/", app=dashboard) if dashboard is not None else Route("/", nothing_here),
    ]
    from reconciler.dashboard.security import Guard

    guard = Middleware(Guard, token=token, allowed_hosts=allowed_hosts)
    return Starlette(routes=routes, middleware=[guard])


class HttpServer:
    """uvicorn serving `app` on `sock` in a daemon thread."""

    def __init__(self, app: Starlette, sock: socket.socket) -> None:
        import uvicorn

        self.sock = sock
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            server_header=False,
            lifespan="off",
            log_config=None,  # its lines go through reconciler.log (JSON, redacted)
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()
