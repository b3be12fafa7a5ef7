"""The command line's frame: the Typer app with its global options, the settings they
select, and the output boundary every command prints through (`emit`). Commands live in
cli.py and its sub-apps (cli_state.py, dashboard/cli.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from reconciler import arguments as a
from reconciler import log, redaction
from reconciler.config import Settings, load_settings
from reconciler.errors import ReconcilerError

app = typer.Typer(
    name="reconciler",
    help="GitOps reconciler for AI deployments: validate, plan, approve, apply, roll back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
options: dict[str, Any] = {}


def settings() -> Settings:
    if "settings" not in options:
        options["settings"] = load_settings(
            options["repo"],
            state_url=options["state"],
            approvals_file=options["approvals"],
            local_registry=options["local_registry"],
        )
        redaction.register_environment(options["settings"].env)
    return options["settings"]  # type: ignore[no-any-return]


def emit(text: str, *, err: bool = False) -> None:
    """The one way out for results and notes: every known secret value is masked."""
    stream = sys.stderr if err else sys.stdout
    stream.write(log.redact(text))
    stream.flush()


def done(code: int) -> NoReturn:
    raise typer.Exit(code)


@app.callback()
def _main(
    repo: a.Repo = Path("."),
    state: a.State = None,
    log_format: a.LogFormat = None,
    approvals_file: a.ApprovalsFile = None,
    local_registry: a.LocalRegistry = None,
    verbose: a.Verbose = 0,
    quiet: a.Quiet = 0,
) -> None:
    if log_format not in (None, "console", "json"):
        raise ReconcilerError(f"--log-format must be console or json, not {log_format!r}")
    options.pop("settings", None)  # settings belong to one invocation
    options.update(
        repo=repo,
        state=state,
        approvals=approvals_file,
        local_registry=local_registry,
        verbosity=verbose - quiet,
    )
    in_ci = bool(os.environ.get("CI"))
    log.configure(fmt=log_format, verbosity=verbose - quiet, in_ci=in_ci)  # type: ignore[arg-type]
