"""The command line's frame: the Typer app with its global options, the settings they
select, and the output boundary every command prints through (`emit`). Commands live in
cli.py and its sub-apps (cli_state.py, dashboard/cli.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from reconciler import arguments as a
from reconciler import log, redaction
from reconciler.config import Settings, load_settings
from reconciler.errors import ReconcilerError


def hoist_global_options(params: Sequence[Any], args: list[str]) -> list[str]:
    """`args` with the global options written after the command moved before it, so
    `reconciler apply --repo X` means `reconciler --repo X apply` (no command has an
    option of the same name). Everything after `--` stays where it is."""
    takes_value: dict[str, bool] = {}
    for p in params:  # typer vendors click: match options by shape, not class
        if p.param_type_name == "option":
            flag = getattr(p, "is_flag", False) or getattr(p, "count", False)
            for name in (*p.opts, *p.secondary_opts):
                takes_value[name] = not flag
    shorts = {n[1] for n, v in takes_value.items() if len(n) == 2 and not v}

    def width(token: str) -> int:
        """How many tokens a global option at `token` spans (0: not a global option)."""
        name = token.split("=", 1)[0]
        if name in takes_value:
            return 2 if takes_value[name] and "=" not in token else 1
        flags = token[1:]
        if token.startswith("-") and not token.startswith("--") and flags:
            return 1 if set(flags) <= shorts else 0
        return 0

    i = 0
    while i < len(args) and args[i] != "--":
        n = width(args[i])
        if n == 0 and not args[i].startswith("-"):
            break  # the command
        i += max(n, 1)
    if i >= len(args) or args[i] == "--":
        return args
    head = list(args[: i + 1])
    moved: list[str] = []
    kept: list[str] = []
    j = i + 1
    while j < len(args):
        if args[j] == "--":
            kept.extend(args[j:])
            break
        n = width(args[j])
        (moved if n else kept).extend(args[j : j + max(n, 1)])
        j += max(n, 1)
    return [*head[:-1], *moved, head[-1], *kept]


class _Group(TyperGroup):
    """The top-level group: global options are accepted after the command too."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(self.params, args))


app = typer.Typer(
    name="reconciler",
    cls=_Group,
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
