"""`reconciler agent`, wired: the clone, the loop on the main thread (where SIGTERM
lands), the HTTP server and the dashboard's refresher on threads beside it."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import git
from git.exc import InvalidGitRepositoryError, NoSuchPathError

from reconciler.agent.loop import Agent, AgentOptions
from reconciler.agent.metrics import Metrics
from reconciler.agent.notify import Notifier
from reconciler.agent.server import HttpServer, make_app
from reconciler.agent.source import DeployBranch
from reconciler.config import Settings, load_settings
from reconciler.dashboard.security import TOKEN_VAR, check_listening, loopback_hosts
from reconciler.dashboard.server import EXPOSED, bind
from reconciler.errors import EXIT_OK, ConfigError
from reconciler.log import get_logger, register_secret
from reconciler.schedules import parse_duration

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from reconciler.dashboard.cli import Emit
    from reconciler.dashboard.refresh import Refresher

log = get_logger("reconciler.agent")

#: What the agent shows to whoever reaches it (beyond `serve`'s pages: its metrics).
AGENT_EXPOSED = f"/metrics and {EXPOSED}"


@dataclass(frozen=True)
class AgentCommand:
    clone: Path | None
    remote: str | None
    state_url: str | None
    environments: tuple[str, ...]
    host: str
    port: int
    dashboard: bool
    refresh: str
    stall_after: str
    insecure_no_token: bool = False


def _seconds(flag: str, text: str) -> float:
    try:
        return parse_duration(text).total_seconds()
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}") from None


def _origin_of(repo: Path) -> str | None:
    try:
        r = git.Repo(repo, search_parent_directories=True)
    except (InvalidGitRepositoryError, NoSuchPathError):
        return None
    return next(iter(r.remote("origin").urls), None) if "origin" in r.remotes else None


def prepare(base: Settings, cmd: AgentCommand) -> tuple[Settings, DeployBranch]:
    """The clone to fetch into, and the settings read from it."""
    if cmd.clone is None:
        source = DeployBranch(base.repo, env=base.env, own_clone=False)
        source.prepare()
        return base, source
    remote = cmd.remote or _origin_of(base.repo)
    source = DeployBranch(cmd.clone, env=base.env, own_clone=True, remote=remote)
    source.prepare()
    settings = load_settings(
        source.root, state_url=cmd.state_url, env=base.env, approvals_file=base.approvals_file
    )
    return settings, source


def _dashboard(
    settings: Settings, cmd: AgentCommand, ref: str, port: int, token: str | None
) -> tuple[Starlette | None, Refresher | None]:
    if not cmd.dashboard:
        return None, None
    from reconciler.dashboard.app import make_app as dashboard_app
    from reconciler.dashboard.refresh import Refresher

    refresher = Refresher(settings, ref=ref, interval=_seconds("--refresh", cmd.refresh))
    app = dashboard_app(
        settings,
        refresher=refresher,
        token=token,
        allowed_hosts=loopback_hosts(cmd.host, port),
    )
    return app, refresher


def run_agent(base: Settings, cmd: AgentCommand, *, emit: Emit) -> int:
    token = base.env.get(TOKEN_VAR) or None
    if token:
        register_secret(token)
    warning = check_listening(
        cmd.host,
        token,
        insecure_no_token=cmd.insecure_no_token,
        what=AGENT_EXPOSED if cmd.dashboard else "/metrics",
    )
    stall_after = _seconds("--stall-after", cmd.stall_after)
    settings, source = prepare(base, cmd)
    branch = source.branch
    metrics = Metrics()
    notifier = Notifier(settings.env)
    agent = Agent(
        settings,
        source,
        notifier=notifier,
        metrics=metrics,
        options=AgentOptions(environments=cmd.environments, stall_after=stall_after),
    )
    if warning is not None:
        log.warning(warning)
    sock = bind(cmd.host, cmd.port)
    port = int(sock.getsockname()[1])
    dashboard, refresher = _dashboard(settings, cmd, source.tracking_ref, port, token)
    app = make_app(
        metrics, agent.health, dashboard, token=token, allowed_hosts=loopback_hosts(cmd.host, port)
    )
    server = HttpServer(app, sock)
    previous = _on_stop_signals(agent)
    server.start()
    if refresher is not None:
        refresher.start()
    shown = f"[{cmd.host}]" if ":" in cmd.host else cmd.host
    emit(
        f"agent: deploying {branch} of origin from {source.root}; "
        f"http://{shown}:{port}/healthz, /metrics{', the dashboard at /' if dashboard else ''} "
        "(SIGTERM stops)\n",
        err=True,
    )
    try:
        agent.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if refresher is not None:
            refresher.stop()
        notifier.close()
        server.stop()
    log.info("stopped")
    return EXIT_OK


def _on_stop_signals(agent: Agent) -> dict[int, Any]:
    """SIGTERM and Ctrl-C stop the agent after the changes under way; a second Ctrl-C
    interrupts at once (the run is then recorded `interrupted` all the same)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if agent.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("stopping: the changes under way finish first", signal=signal.Signals(signum).name)
        agent.stop()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
