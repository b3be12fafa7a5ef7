"""Command line: parse arguments, call a command, pick its view, map the exit code.

Results go to stdout; logs, progress and errors to stderr. Everything printed passes
the redaction boundary (`emit`). Errors are one line plus details, never a traceback;
exit codes are documented in reconciler/errors.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import typer

from reconciler import agent, dashboard
from reconciler import arguments as a
from reconciler.cli_base import Invocation, app, done, emit
from reconciler.cli_state import app as state_app
from reconciler.errors import EXIT_ERROR, EXIT_OK, ReconcilerError
from reconciler.runs import cli as runs_cli

__all__ = ["app", "emit", "main"]
app.add_typer(state_app, name="state")
app.add_typer(dashboard.commands)  # overview, schedules, show, serve
app.add_typer(agent.commands)  # agent
app.add_typer(runs_cli.commands)  # run, executions, metrics


@app.command()
def validate(ctx: typer.Context, paths: a.Paths = None, ref: a.Ref = None) -> None:
    """Check every manifest; print every problem as path:line:col: message. Exit 0/1."""
    cli: Invocation = ctx.obj
    from reconciler.engine.validate import validate as run
    from reconciler.views import validate as view

    cli.emit(view.human(run(cli.session(), paths or (), ref)))


@app.command()
def schema(ctx: typer.Context, out_dir: a.SchemaDir = Path("schemas")) -> None:
    """Write JSON Schemas (one per kind, one for any manifest) for editors."""
    cli: Invocation = ctx.obj
    from reconciler.manifests.schema import write_schemas

    cli.emit("".join(f"{p}\n" for p in write_schemas(out_dir)))


@app.command()
def init(
    ctx: typer.Context,
    directory: a.Directory = Path("."),
    ci: a.Ci = "github",
    approvals: a.InitApprovals = None,
) -> None:
    """Scaffold a new manifests repo: config, dev and a protected production, a provider
    and a deployment."""
    cli: Invocation = ctx.obj
    from reconciler.scaffold import init_repo

    directory.mkdir(parents=True, exist_ok=True)
    cli.emit("".join(f"created {p}\n" for p in init_repo(directory, ci=ci, approvals=approvals)))
    cli.emit(f"next: cd {directory} && reconciler validate && reconciler plan\n")


def _color() -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or sys.stdout.isatty()


@app.command()
def plan(
    ctx: typer.Context,
    env: a.Env = None,
    ref: a.Ref = None,
    as_json: a.Json = False,
    markdown: a.Markdown = False,
    out_file: a.PlanOut = None,
    allow_delete: a.AllowDelete = False,
    detailed_exitcode: a.DetailedExitcode = False,
    comment: a.Comment = False,
    pr: a.Pr = None,
) -> None:
    """Show what apply would change: per environment, create/update/replace/delete."""
    cli: Invocation = ctx.obj
    from reconciler import ci
    from reconciler.engine import forge
    from reconciler.engine.plan import PlanOptions
    from reconciler.engine.plan import plan as run
    from reconciler.views import plan as view

    s = cli.session()
    redact = s.redactor.redact
    p = run(s, PlanOptions(tuple(env or ()), ref, allow_delete))
    if out_file is not None:
        out_file.write_text(redact(view.json(p)), encoding="utf-8")
        cli.emit(f"plan saved to {out_file}\n", err=True)
    cli.emit(
        view.json(p) if as_json else view.markdown(p) if markdown else view.human(p, color=_color())
    )
    if s.settings.env.get("GITHUB_STEP_SUMMARY"):  # rendering 10,000 changes costs: if asked
        ci.append_step_summary(s.settings.env, redact(view.markdown(p)))
    if comment:
        body = redact(view.markdown(p))
        number = forge.post_plan_comment(s, body, view.PLAN_COMMENT_MARKER, pr)
        cli.emit(f"plan posted to pull request #{number}\n", err=True)
    if detailed_exitcode and p.has_changes:
        done(2)


@app.command()
def approvals(
    ctx: typer.Context,
    env: a.Env = None,
    commit: a.Commit = None,
    pr: a.Pr = None,
    status: a.Status = False,
    as_json: a.Json = False,
) -> None:
    """Judge approvals for each environment the change touches; exit 0 met, 3 not."""
    cli: Invocation = ctx.obj
    from reconciler.engine import approvals as command
    from reconciler.views import approvals as view

    s = cli.session()
    report = command.judge(s, commit=commit, pull_request=pr, environments=tuple(env or ()))
    cli.emit(view.json(report) if as_json else view.human(report))
    if status:
        command.post_status(s, report, s.redactor.redact(view.status_description(report)))
        cli.emit(view.posted(report), err=True)
    done(report.exit_code)


@app.command()
def approve(
    ctx: typer.Context,
    pr: a.ApprovePr,
    reviewer: a.Reviewer,
    commit: a.MergeCommit = None,
    author: a.PrAuthor = None,
    title: a.Title = None,
) -> None:
    """Record an approval in the approvals file (source: file), facts filled from git."""
    cli: Invocation = ctx.obj
    from reconciler.engine.approve import ApproveOptions
    from reconciler.engine.approve import approve as run
    from reconciler.views import approvals as view

    report = run(cli.session(), ApproveOptions(pr, reviewer, commit, author, title))
    cli.emit(view.approved(report))


@app.command()
def apply(
    ctx: typer.Context,
    env: a.Env = None,
    plan_file: a.PlanFile = None,
    commit: a.Commit = None,
    allow_delete: a.AllowDelete = False,
    rollback_on_failure: a.RollbackOnFailure = False,
    break_lock: a.BreakLock = False,
    parallelism: a.Parallelism = None,
    override_window: a.OverrideWindow = False,
    pr: a.Pr = None,
    heal: a.Heal = False,
    run_timeout: a.RunTimeout = None,
    no_revert_pr: a.NoRevertPr = False,
) -> None:
    """Apply the changes; exit 0 applied, 1 failed, 3 blocked, 4 locked."""
    cli: Invocation = ctx.obj
    from reconciler import ci
    from reconciler.commands import apply as command
    from reconciler.views import apply as view

    s = cli.session()
    opts = command.ApplyOptions(
        environments=tuple(env or ()),
        plan_file=plan_file,
        commit=commit,
        allow_delete=allow_delete,
        rollback_on_failure=rollback_on_failure,
        break_lock=break_lock,
        parallelism=parallelism,
        override_window=override_window,
        pull_request=pr,
        run_timeout=run_timeout,
        revert_pr=not no_revert_pr,
    )
    if heal:
        healed = command.heal_drift(s, opts)
        cli.emit(view.heal_human(healed))
        done(healed.exit_code)
    with view.progress(sys.stderr, s.redactor) as watch:
        report = command.apply(s, opts, watch)
    cli.emit(view.human(report))
    summary = view.summary_markdown(report.results, report.reverts)
    ci.append_step_summary(s.settings.env, s.redactor.redact(summary))
    done(report.exit_code)


@app.command()
def status(
    ctx: typer.Context, env: a.Env = None, as_json: a.Json = False, health: a.Health = True
) -> None:
    """What is recorded as deployed where, its health, and when schedules run next."""
    cli: Invocation = ctx.obj
    from reconciler.engine.status import status as run
    from reconciler.views import status as view

    report = run(cli.session(), env or (), health=health)
    cli.emit(view.json(report) if as_json else view.human(report))


@app.command()
def drift(ctx: typer.Context, env: a.Env = None, as_json: a.Json = False) -> None:
    """Compare live provider state with what was recorded; exit 2 when anything drifted."""
    cli: Invocation = ctx.obj
    from reconciler.engine.drift import drift as run
    from reconciler.views import drift as view

    s = cli.session()
    report = run(s, env or ())
    cli.emit(view.json(report, s.redactor) if as_json else view.human(report))
    done(report.exit_code)


@app.command()
def rollback(
    ctx: typer.Context,
    commits: a.Commits = None,
    to: a.To = None,
    branch: a.Branch = None,
    push: a.Push = False,
    open_pr: a.OpenPr = False,
) -> None:
    """Write a revert commit (like git revert) that apply records as a rollback."""
    cli: Invocation = ctx.obj
    from reconciler.engine.rollback import rollback as run
    from reconciler.views import rollback as view

    result = run(cli.session(), commits or (), to=to, branch=branch, push=push, open_pr=open_pr)
    cli.emit(view.human(result))


@app.command()
def watch(ctx: typer.Context, env: a.Env = None, apply_: a.WatchApply = False) -> None:
    """Re-validate and re-plan on every save; Ctrl-C to stop."""
    cli: Invocation = ctx.obj
    from reconciler import watch as mechanism
    from reconciler.commands.watch import WatchSession

    watching = WatchSession(
        cli.session(), tuple(env or ()), apply_, lambda text: cli.emit(text + "\n")
    )
    try:
        mechanism.run(watching.session.settings, watching.on_change)
    except KeyboardInterrupt:
        cli.emit("stopped\n")


@app.command()
def history(
    ctx: typer.Context, env: a.Env = None, as_json: a.Json = False, limit: a.Limit = 50
) -> None:
    """Runs, newest first: commit, trigger, pull request, approvers, outcome, rollbacks."""
    cli: Invocation = ctx.obj
    from reconciler.engine.history import history as run
    from reconciler.views import history as view

    report = run(cli.session(), env or (), limit=limit)
    cli.emit(view.json(report) if as_json else view.human(report))


def _error(e: ReconcilerError, inv: Invocation) -> None:
    inv.emit(f"error: {e.message}\n" + (f"{e.details}\n" if e.details else ""), err=True)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI; map every expected failure to one line and its exit code."""
    code = EXIT_OK
    inv = Invocation()
    try:
        # Without standalone mode click returns (not raises) the code of typer.Exit.
        returned = app(args=argv, standalone_mode=False, obj=inv)
        if isinstance(returned, int):
            code = returned
    except ReconcilerError as e:
        _error(e, inv)
        code = e.exit_code
    except typer.Exit as e:
        code = e.exit_code
    except KeyboardInterrupt:
        inv.emit("interrupted\n", err=True)
        code = 130
    except Exception as e:  # usage errors and anything unexpected
        code = _unexpected(e, inv)
    sys.exit(code)


def _unexpected(e: Exception, inv: Invocation) -> int:
    show = getattr(e, "show", None)
    if isinstance(e, typer.Abort):
        inv.emit("aborted\n", err=True)
        return EXIT_ERROR
    if callable(show) and isinstance(getattr(e, "exit_code", None), int):
        # click's usage errors (typer vendors click, so match by shape, not class)
        show(file=sys.stderr)
        return e.exit_code  # type: ignore[attr-defined,no-any-return]
    inv.emit(f"internal error: {type(e).__name__}: {e}\n", err=True)
    inv.emit("this is a bug in reconciler; re-run with -v and report it\n", err=True)
    if inv.verbosity > 0:
        import traceback

        inv.emit(traceback.format_exc(), err=True)
    return EXIT_ERROR
