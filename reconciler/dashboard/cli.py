"""The commands that feed the dashboard and start it: `overview`, `schedules`, `show`
and `serve`. cli.py merges this app's commands into its own (`add_typer` without a
name), so they are top-level commands like the rest."""

from __future__ import annotations

from typing import Protocol

import typer

from reconciler import arguments as a

commands = typer.Typer(add_completion=False, rich_markup_mode=None)


class Emit(Protocol):
    def __call__(self, text: str, *, err: bool = False) -> None: ...


@commands.command()
def overview(
    env: a.Env = None, ref: a.Ref = None, as_json: a.Json = False, live: a.Live = True
) -> None:
    """Per environment: last run, drift, pending, blocked, window; the promotion matrix."""
    from reconciler.cli_base import emit, settings
    from reconciler.commands.overview import overview as run
    from reconciler.views import overview as view

    report = run(settings(), ref=ref, environments=env or (), live=live)
    emit(view.json(report) if as_json else view.human(report))


@commands.command()
def schedules(env: a.Env = None, as_json: a.Json = False) -> None:
    """When each recorded schedule fires next, in its zone and in UTC."""
    from reconciler.cli_base import emit, settings
    from reconciler.commands.schedules import schedules as run
    from reconciler.views import schedules as view

    report = run(settings(), env or ())
    emit(view.json(report) if as_json else view.human(report))


@commands.command()
def show(run_id: a.RunId, as_json: a.Json = False) -> None:
    """One recorded run: its changes, field by field."""
    from reconciler.cli_base import emit, settings
    from reconciler.commands.show import show as run
    from reconciler.views import show as view

    report = run(settings(), run_id)
    emit(view.json(report) if as_json else view.human(report))


@commands.command()
def serve(
    host: a.Host = "127.0.0.1",
    port: a.Port = 8377,
    refresh: a.Refresh = "60s",
    ref: a.Ref = None,
    insecure_no_token: a.InsecureNoToken = False,
) -> None:
    """Read-only web dashboard and JSON API (token: RECONCILER_DASHBOARD_TOKEN, required
    beyond loopback)."""
    from reconciler.cli_base import emit, settings
    from reconciler.dashboard.server import serve as run

    run(
        settings(),
        host=host,
        port=port,
        refresh=refresh,
        ref=ref,
        emit=emit,
        insecure_no_token=insecure_no_token,
    )
