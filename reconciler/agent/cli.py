"""The `agent` command; cli.py merges this app's commands into its own."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reconciler import arguments as a

if TYPE_CHECKING:
    from reconciler.cli_base import Invocation

commands = typer.Typer(add_completion=False, rich_markup_mode=None)

Clone = Annotated[
    Path | None,
    typer.Option(
        "--clone",
        help="A directory the agent owns: cloned from --remote (default: the origin of "
        "--repo) when empty, moved only by the agent. Default: fetch into --repo itself.",
    ),
]
Remote = Annotated[
    str | None,
    typer.Option(
        "--remote",
        envvar="RECONCILER_REMOTE",
        show_envvar=False,
        help="The manifests repo's URL, for --clone (env RECONCILER_REMOTE: a URL with a "
        "token in it is better not a flag, which ps shows).",
    ),
]
Dashboard = Annotated[
    bool,
    typer.Option("--dashboard/--no-dashboard", help="Serve the dashboard's pages and API too."),
]
StallAfter = Annotated[
    str,
    typer.Option(
        "--stall-after", help="/healthz fails when the loop shows no life this long (15m)."
    ),
]


Workers = Annotated[
    int, typer.Option("--workers", help="Environments worked at once (each on its own schedule).")
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="Only this shard: NAME (environments whose sync.shard is NAME) or "
        "label=value[,label=value] (the Environment's labels).",
    ),
]
Dynamic = Annotated[
    bool,
    typer.Option(
        "--dynamic",
        help="Share the environments with the other --dynamic agents on this postgresql:// "
        "state (rendezvous hashing over the live members).",
    ),
]
Heartbeat = Annotated[
    str, typer.Option("--heartbeat", help="How often members beat and look at each other (5s).")
]
AssignBy = Annotated[
    str,
    typer.Option(
        "--assign-by",
        help="What --dynamic gives out: environment, or account (environments writing to "
        "the same provider account go to one agent).",
    ),
]


@commands.command()
def agent(
    ctx: typer.Context,
    clone: Clone = None,
    remote: Remote = None,
    env: a.Env = None,
    host: a.Host = "127.0.0.1",
    port: a.Port = 8377,
    dashboard: Dashboard = True,
    refresh: a.Refresh = "60s",
    stall_after: StallAfter = "15m",
    insecure_no_token: a.InsecureNoToken = False,
    workers: Workers = 4,
    shard: ShardOpt = None,
    dynamic: Dynamic = False,
    heartbeat: Heartbeat = "5s",
    assign_by: AssignBy = "environment",
) -> None:
    """Keep environments in sync with the deploy branch (their `sync` policy): apply what
    the gate allows, heal drift, notify; serve /metrics, /healthz and the dashboard.
    SIGTERM lets the changes under way finish and be recorded, then exits 0."""
    from reconciler.agent.run import AgentCommand, run_agent

    cli: Invocation = ctx.obj
    command = AgentCommand(
        clone=clone,
        remote=remote,
        state_url=cli.state,
        environments=tuple(env or ()),
        host=host,
        port=port,
        dashboard=dashboard,
        refresh=refresh,
        stall_after=stall_after,
        insecure_no_token=insecure_no_token,
        workers=workers,
        shard=shard,
        dynamic=dynamic,
        heartbeat=heartbeat,
        assign_by=assign_by,
    )
    raise typer.Exit(run_agent(cli.session(), command, emit=cli.emit))
