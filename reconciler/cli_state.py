"""`reconciler state ...`: the state sub-commands (cli.py adds this app as `state`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from reconciler.cli_base import Invocation

app = typer.Typer(
    help="Recorded state: copy it between backends.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

From = Annotated[
    str | None,
    typer.Option("--from", help="The state to copy (default: the configured state)."),
]
To = Annotated[str, typer.Option("--to", help="The state URL to copy it to (empty).")]


@app.command()
def migrate(ctx: typer.Context, to_url: To, from_url: From = None) -> None:
    """Copy every environment's state with its history (runs, changes, serials) and the
    fingerprint key; refuses a target that has any of it already. Exit 4 while a run
    holds a lock."""
    from reconciler.engine.state import migrate as run
    from reconciler.views import state as view

    cli: Invocation = ctx.obj
    cli.emit(view.human(run(cli.session(), from_url, to_url)))
