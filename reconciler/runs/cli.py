"""`run`, `executions` and `metrics`; cli.py merges these into its own commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from reconciler import arguments as a

if TYPE_CHECKING:
    from reconciler.cli_base import Invocation

commands = typer.Typer(add_completion=False, rich_markup_mode=None)
executions_app = typer.Typer(add_completion=False, rich_markup_mode=None)
commands.add_typer(executions_app, name="executions")


@commands.command()
def run(
    ctx: typer.Context,
    deployment: a.Deployment,
    env: a.RunEnv,
    input_: a.Input = None,
    input_file: a.InputFile = None,
    as_json: a.Json = False,
) -> None:
    """Invoke a deployment as it is recorded applied in ENV; exit 0 completed, 1 failed."""
    from reconciler.engine.run import parse_input
    from reconciler.engine.run import run as command
    from reconciler.views import run as view

    cli: Invocation = ctx.obj
    report = command(cli.session(), deployment, env, parse_input(input_, input_file))
    cli.emit(view.json(report) if as_json else view.human(report))
    raise typer.Exit(report.exit_code)


@executions_app.callback(invoke_without_command=True)
def executions(
    ctx: typer.Context,
    env: a.Env = None,
    deployment: a.Deployments = None,
    status: a.ExecStatus = None,
    since: a.Since = None,
    limit: a.ExecLimit = 100,
    as_json: a.Json = False,
) -> None:
    """Recorded executions, newest first (`executions show ID`: one, whole)."""
    cli: Invocation = ctx.obj
    if ctx.invoked_subcommand is not None:
        return
    from reconciler.engine.executions import list_executions, parse_since
    from reconciler.views import run as view

    found = list_executions(
        cli.session(),
        environments=env or (),
        deployments=deployment or (),
        statuses=status or (),
        since=parse_since(since),
        limit=limit,
    )
    cli.emit(view.list_json(found) if as_json else view.list_human(found))


@executions_app.command("show")
def show(ctx: typer.Context, execution_id: a.ExecutionId, as_json: a.Json = False) -> None:
    """One execution whole: input, output, usage, cost, error."""
    from reconciler.engine.executions import show_execution
    from reconciler.views import run as view

    cli: Invocation = ctx.obj
    ex = show_execution(cli.session(), execution_id)
    cli.emit(view.json_document(ex) if as_json else view.execution_human(ex))


@commands.command()
def metrics(
    ctx: typer.Context,
    env: a.Env = None,
    deployment: a.Deployments = None,
    since: a.Since = None,
    as_json: a.Json = False,
) -> None:
    """Requests, success rate, latency p50/p95/p99, tokens and cost per deployment."""
    from reconciler.engine.executions import parse_since
    from reconciler.engine.metrics import metrics as command
    from reconciler.views import metrics as view

    cli: Invocation = ctx.obj
    report = command(
        cli.session(),
        environments=env or (),
        deployments=deployment or (),
        since=parse_since(since),
    )
    cli.emit(view.json(report) if as_json else view.human(report))


@commands.command()
def promote(
    ctx: typer.Context,
    source: a.PromoteFrom,
    target: a.PromoteTo,
    deployments: a.PromoteDeployments = None,
    branch: a.Branch = None,
    push: a.Push = False,
    open_pr: a.OpenPr = False,
    as_json: a.Json = False,
) -> None:
    """What --from has applied, whether --to may take it, and the manifest edit (exit 3
    when a deployment is not eligible)."""
    from reconciler.engine.promote import promote as command
    from reconciler.views import promote as view

    cli: Invocation = ctx.obj
    report = command(
        cli.session(), source, target, deployments or (), branch=branch, push=push, open_pr=open_pr
    )
    cli.emit(view.json(report) if as_json else view.human(report))
    raise typer.Exit(report.exit_code)


@commands.command("eval")
def eval_(
    ctx: typer.Context,
    name: a.EvalName,
    env: a.RunEnv,
    as_json: a.Json = False,
    comment: a.Comment = False,
    pr: a.Pr = None,
    metrics_file: a.MetricsFile = None,
) -> None:
    """Run an Eval's dataset against the deployment as applied in ENV and record each
    call; exit 0 passed, 1 failed or stopped by its budget, 3 inconclusive. With
    --comment, the result is posted to the pull request (one comment per eval and
    environment, updated on each run); with --metrics-file, written as Prometheus text."""
    from reconciler.engine import forge
    from reconciler.engine.evaluate import evaluate
    from reconciler.views import evaluate as view

    cli: Invocation = ctx.obj
    s = cli.session()
    report = evaluate(s, name, env, for_pull_request=comment or pr is not None)
    cli.emit(view.json(report) if as_json else view.human(report))
    if metrics_file is not None:
        from reconciler.runs.prom import write_eval_metrics

        write_eval_metrics(report, metrics_file)
    if comment:
        body = s.redactor.redact(view.markdown(report))
        number = forge.post_plan_comment(s, body, view.marker(report), pr)
        cli.emit(f"eval posted to pull request #{number}\n", err=True)
    raise typer.Exit(report.exit_code)
