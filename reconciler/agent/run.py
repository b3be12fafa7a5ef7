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

from reconciler.agent.cluster import Coordinator, Shard, StateProbe
from reconciler.agent.loop import Agent, AgentOptions
from reconciler.agent.metrics import Metrics
from reconciler.agent.notify import Notifier
from reconciler.agent.recheck import Rechecker
from reconciler.agent.server import HttpServer, make_app
from reconciler.agent.source import DeployBranch
from reconciler.config import load_settings
from reconciler.dashboard.security import TOKEN_VAR, check_listening, loopback_hosts
from reconciler.dashboard.server import EXPOSED, bind
from reconciler.errors import EXIT_OK, ConfigError
from reconciler.log import get_logger, json_lines
from reconciler.runs.firer import Firer
from reconciler.runs.prom import CheckMetrics
from reconciler.schedules import parse_duration
from reconciler.session import Session
from reconciler.state.members import check_session_locks

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
    workers: int = 4
    shard: str | None = None
    dynamic: bool = False
    heartbeat: str = "5s"
    assign_by: str = "environment"


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


def prepare(session: Session, cmd: AgentCommand) -> tuple[Session, DeployBranch]:
    """The clone to fetch into, and the session over the settings read from it."""
    base = session.settings
    if cmd.clone is None:
        source = DeployBranch(
            base.repo, env=base.env, own_clone=False, register=session.redactor.add
        )
        source.prepare()
        return session, source
    remote = cmd.remote or _origin_of(base.repo)
    source = DeployBranch(
        cmd.clone, env=base.env, own_clone=True, remote=remote, register=session.redactor.add
    )
    source.prepare()
    settings = load_settings(
        source.root, state_url=cmd.state_url, env=base.env, approvals_file=base.approvals_file
    )
    return session.with_settings(settings), source


def _dashboard(
    session: Session, cmd: AgentCommand, ref: str, port: int, token: str | None
) -> tuple[Starlette | None, Refresher | None]:
    if not cmd.dashboard:
        return None, None
    from reconciler.dashboard.app import make_app as dashboard_app
    from reconciler.dashboard.refresh import Refresher

    refresher = Refresher(session, ref=ref, interval=_seconds("--refresh", cmd.refresh))
    app = dashboard_app(
        session,
        refresher=refresher,
        token=token,
        allowed_hosts=loopback_hosts(cmd.host, port),
    )
    return app, refresher


def _options(cmd: AgentCommand, stall_after: float) -> AgentOptions:
    if cmd.workers < 1:
        raise ConfigError(f"--workers {cmd.workers}: give at least 1")
    if cmd.assign_by not in ("environment", "account"):
        raise ConfigError(f"--assign-by {cmd.assign_by!r}: environment or account")
    return AgentOptions(
        environments=cmd.environments,
        stall_after=stall_after,
        workers=cmd.workers,
        shard=Shard.parse(cmd.shard) if cmd.shard is not None else None,
        assign_by=cmd.assign_by,
    )


def run_agent(base: Session, cmd: AgentCommand, *, emit: Emit) -> int:
    token = base.settings.env.get(TOKEN_VAR) or None
    if token:
        base.redactor.add([token])
    warning = check_listening(
        cmd.host,
        token,
        insecure_no_token=cmd.insecure_no_token,
        what=AGENT_EXPOSED if cmd.dashboard else "/metrics",
    )
    stall_after = _seconds("--stall-after", cmd.stall_after)
    heartbeat = _seconds("--heartbeat", cmd.heartbeat)
    if heartbeat <= 0:
        raise ConfigError(f"--heartbeat {cmd.heartbeat}: must be more than 0s")
    options = _options(cmd, stall_after)
    session, source = prepare(base, cmd)
    settings = session.settings
    postgres = settings.state_url.startswith(("postgresql://", "postgres://"))
    if cmd.dynamic and not postgres:
        raise ConfigError(
            "--dynamic needs a postgresql:// state: agents find each other there "
            f"(the state is {settings.state_url.split(':', 1)[0]}://)"
        )
    if postgres:
        check_session_locks(settings.state_url)
    branch = source.branch
    metrics = Metrics()
    notifier = Notifier(settings.env, session.redactor)
    agent_ref: list[Agent] = []

    def wake() -> None:
        if agent_ref:
            agent_ref[0].wake()

    coordinator = (
        Coordinator(settings.state_url, heartbeat=heartbeat, on_change=wake)
        if cmd.dynamic
        else None
    )
    probe = StateProbe(session, period=min(options.wake, heartbeat), on_change=wake)
    agent = Agent(
        session,
        source,
        notifier=notifier,
        metrics=metrics,
        options=options,
        coordinator=coordinator,
        probe=probe,
    )
    agent_ref.append(agent)
    if warning is not None:
        log.warning(warning)
    sock = bind(cmd.host, cmd.port)
    port = int(sock.getsockname()[1])
    dashboard, refresher = _dashboard(session, cmd, source.tracking_ref, port, token)
    app = make_app(
        metrics,
        agent.health,
        dashboard,
        ready=agent.readiness,
        token=token,
        allowed_hosts=loopback_hosts(cmd.host, port),
    )
    server = HttpServer(app, sock)
    previous = _on_stop_signals(agent)
    probe.start()
    if coordinator is not None:
        coordinator.start()
    firer = Firer(session, environments=cmd.environments, registry=metrics.registry)
    firer.start()
    rechecker = Rechecker(
        session,
        notifier,
        environments=cmd.environments,
        metrics=CheckMetrics(metrics.registry),
    )
    rechecker.start()
    server.start()
    if refresher is not None:
        refresher.start()
    shown = f"[{cmd.host}]" if ":" in cmd.host else cmd.host
    url = f"http://{shown}:{port}/"
    if json_lines():  # every line on stderr is then a JSON object, this one too
        log.info(
            "agent started",
            branch=branch,
            clone=str(source.root),
            url=url,
            port=port,
            shard=str(options.shard) if options.shard else None,
            member=coordinator.name if coordinator else None,
        )
    else:
        emit(
            f"agent: deploying {branch} of origin from {source.root}; "
            f"{url}healthz, /readyz, /metrics{', the dashboard at /' if dashboard else ''} "
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
        probe.stop()
        if coordinator is not None:
            coordinator.stop()
        firer.stop()
        rechecker.stop()
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
