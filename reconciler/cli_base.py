"""The command line's frame: the Typer app with its global options, the session they
select (Typer's context object, `ctx.obj`), and the output boundary every command
prints through (`emit`). Commands live in cli.py and its sub-apps (cli_state.py,
dashboard/cli.py, agent/cli.py, runs/cli.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from reconciler import arguments as a
from reconciler import log
from reconciler.config import load_settings
from reconciler.errors import ReconcilerError
from reconciler.session import Session


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


@dataclass
class Invocation:
    """The global options of one command line (`ctx.obj`), and the session they select,
    built when a command first asks for it (`init` and `schema` never do: they need no
    manifests repo)."""

    repo: Path = Path(".")
    state: str | None = None
    approvals_file: Path | None = None
    local_registry: Path | None = None
    verbosity: int = 0
    _session: Session | None = field(default=None, repr=False)

    def session(self) -> Session:
        if self._session is None:
            settings = load_settings(
                self.repo,
                state_url=self.state,
                approvals_file=self.approvals_file,
                local_registry=self.local_registry,
            )
            self._session = Session.start(settings, verbosity=self.verbosity)
        return self._session

    def emit(self, text: str, *, err: bool = False) -> None:
        """`emit` through this invocation's redactor."""
        stream = sys.stderr if err else sys.stdout
        redactor = self._session.redactor if self._session is not None else None
        stream.write(redactor.redact(text) if redactor is not None else log.redact(text))
        stream.flush()


def emit(text: str, *, err: bool = False) -> None:
    """Output outside any command (its error once the command has ended): masked by
    every value the process's sessions registered."""
    Invocation().emit(text, err=err)


def done(code: int) -> NoReturn:
    raise typer.Exit(code)


@app.callback()
def _main(
    ctx: typer.Context,
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
    inv = ctx.obj if isinstance(ctx.obj, Invocation) else Invocation()
    inv.repo, inv.state, inv.approvals_file = repo, state, approvals_file
    inv.local_registry, inv.verbosity, inv._session = local_registry, verbose - quiet, None
    ctx.obj = inv
    in_ci = bool(os.environ.get("CI"))
    log.configure(fmt=log_format, verbosity=verbose - quiet, in_ci=in_ci)  # type: ignore[arg-type]
