"""The commands that feed the dashboard and start it: `overview`, `schedules`, `show`
and `serve`. cli.py merges this app's commands into its own (`add_typer` without a
name), so they are top-level commands like the rest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import typer

from reconciler import arguments as a

if TYPE_CHECKING:
    from reconciler.cli_base import Invocation

commands = typer.Typer(add_completion=False, rich_markup_mode=None)


class Emit(Protocol):
    def __call__(self, text: str, *, err: bool = False) -> None: ...


@commands.command()
def overview(
    ctx: typer.Context,
    env: a.Env = None,
    ref: a.Ref = None,
    as_json: a.Json = False,
    live: a.Live = True,
) -> None:
    """Per environment: last run, drift, pending, blocked, window; the promotion matrix."""
    from reconciler.engine.overview import overview as run
    from reconciler.views import overview as view

    cli: Invocation = ctx.obj
    report = run(cli.session(), ref=ref, environments=env or (), live=live)
    cli.emit(view.json(report) if as_json else view.human(report))


@commands.command()
def schedules(ctx: typer.Context, env: a.Env = None, as_json: a.Json = False) -> None:
    """When each recorded schedule fires next, in its zone and in UTC."""
    from reconciler.engine.schedules import schedules as run
    from reconciler.views import schedules as view

    cli: Invocation = ctx.obj
    report = run(cli.session(), env or ())
    cli.emit(view.json(report) if as_json else view.human(report))


@commands.command()
def show(ctx: typer.Context, run_id: a.RunId, as_json: a.Json = False) -> None:
    """One recorded run: its changes, field by field."""
    from reconciler.engine.show import show as run
    from reconciler.views import show as view

    cli: Invocation = ctx.obj
    report = run(cli.session(), run_id)
    cli.emit(view.json(report) if as_json else view.human(report))


@commands.command()
def serve(
    ctx: typer.Context,
    host: a.Host = "127.0.0.1",
    port: a.Port = 8377,
    refresh: a.Refresh = "60s",
    ref: a.Ref = None,
    insecure_no_token: a.InsecureNoToken = False,
) -> None:
    """Read-only web dashboard and JSON API (token: RECONCILER_DASHBOARD_TOKEN, required
    beyond loopback)."""
    from reconciler.dashboard.server import serve as run

    cli: Invocation = ctx.obj
    run(
        cli.session(),
        host=host,
        port=port,
        refresh=refresh,
        ref=ref,
        emit=cli.emit,
        insecure_no_token=insecure_no_token,
    )
