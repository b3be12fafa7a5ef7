"""`reconciler serve`: uvicorn on a socket bound here (so the address printed is the one
listened on, `--port 0` included), the refresher in a thread beside it."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from reconciler.dashboard.security import TOKEN_VAR, check_listening, loopback_hosts
from reconciler.errors import ConfigError
from reconciler.log import get_logger
from reconciler.schedules import parse_duration
from reconciler.session import Session

if TYPE_CHECKING:
    from reconciler.dashboard.cli import Emit

log = get_logger("reconciler.dashboard")

#: What `serve` shows to whoever reaches it.
EXPOSED = (
    "every page and /api/ document (environments, runs and their field diffs, plans, "
    "approvers, drift)"
)


def serve(
    session: Session,
    *,
    host: str,
    port: int,
    refresh: str,
    ref: str | None,
    emit: Emit,
    insecure_no_token: bool = False,
) -> None:
    token = session.settings.env.get(TOKEN_VAR) or None
    warning = check_listening(host, token, insecure_no_token=insecure_no_token, what=EXPOSED)
    import uvicorn

    from reconciler.dashboard.app import make_app
    from reconciler.dashboard.refresh import Refresher

    try:
        interval = parse_duration(refresh).total_seconds()
    except ValueError as e:
        raise ConfigError(f"--refresh: {e}") from None
    if warning is not None:
        log.warning(warning)
    refresher = Refresher(session, ref=ref, interval=interval)
    sock = bind(host, port)
    sock.set_inheritable(True)
    bound = sock.getsockname()[1]
    app = make_app(
        session, refresher=refresher, token=token, allowed_hosts=loopback_hosts(host, bound)
    )
    shown = f"[{host}]" if ":" in host else host
    emit(f"dashboard on http://{shown}:{bound}/ (Ctrl-C stops)\n", err=True)
    refresher.start()  # pages answer 503 "not ready" until the first snapshot is built
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, server_header=False, lifespan="on"
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        refresher.stop()
        sock.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (the agent's too), or a ConfigError naming the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every small response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    return sock
