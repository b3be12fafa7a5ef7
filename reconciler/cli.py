"""Command line: parse arguments, call the library, print. Nothing else lives here.

Results go to stdout; logs, progress and errors to stderr. Errors are one line plus
details, never a traceback; exit codes are documented in reconciler/errors.py.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn

import typer
from rich.console import Console

from reconciler import log
from reconciler.config import Settings, load_settings
from reconciler.errors import EXIT_ERROR, EXIT_OK, ConfigError, ReconcilerError

if TYPE_CHECKING:
    from reconciler.apply import ChangeResult, ProgressFn
    from reconciler.approvals import ForgeSource
    from reconciler.gate import GateResult

app = typer.Typer(
    name="reconciler",
    help="GitOps reconciler for AI deployments: validate, plan, approve, apply, roll back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


@dataclass
class _Globals:
    repo: Path
    state: str | None
    log_format: Literal["console", "json"] | None
    verbosity: int
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.repo, state_url=self.state)
        return self._settings


_g: _Globals | None = None


def _globals() -> _Globals:
    assert _g is not None
    return _g


@app.callback()
def _main(
    repo: Annotated[
        Path, typer.Option("--repo", help="The manifests repo (default: current directory).")
    ] = Path("."),
    state: Annotated[
        str | None,
        typer.Option(
            "--state", help="State URL: sqlite:///path.db or git://REF (env RECONCILER_STATE)."
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", help="console or json (json by default when CI is set)."),
    ] = None,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logs.")] = 0,
    quiet: Annotated[int, typer.Option("-q", "--quiet", count=True, help="Fewer logs.")] = 0,
) -> None:
    global _g
    if log_format not in (None, "console", "json"):
        raise ReconcilerError(f"--log-format must be console or json, not {log_format!r}")
    _g = _Globals(repo, state, log_format, verbose - quiet)  # type: ignore[arg-type]
    import os

    log.configure(fmt=_g.log_format, verbosity=_g.verbosity, in_ci=bool(os.environ.get("CI")))


def _exit(code: int) -> NoReturn:
    raise typer.Exit(code)


# --- validate / schema / init ------------------------------------------------------


@app.command()
def validate(
    paths: Annotated[
        list[str] | None,
        typer.Argument(help="Manifest folders or files (default: from reconciler.yaml)."),
    ] = None,
    ref: Annotated[str | None, typer.Option("--ref", help="Validate at a git ref.")] = None,
) -> None:
    """Check every manifest; print every problem as path:line:col: message. Exit 0/1."""
    from dataclasses import replace

    from reconciler.load import load

    settings = _globals().settings
    if paths:
        settings = replace(settings, manifest_paths=tuple(paths))
    loaded = load(settings, ref)
    d = loaded.desired
    out.print(
        f"valid: {d.manifests.documents} documents, {d.count()} instances, "
        f"{len(d.environments)} environments ({', '.join(d.environments)})"
    )


@app.command()
def schema(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder to write the JSON Schemas into.")
    ] = Path("schemas"),
) -> None:
    """Write JSON Schemas (one per kind, one for any manifest) for editors."""
    from reconciler.manifests.schema import write_schemas

    for p in write_schemas(out_dir):
        out.print(str(p))


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the repo.")] = Path("."),
    ci: Annotated[
        str, typer.Option("--ci", help="Pipelines to add: github, gitlab or none.")
    ] = "github",
) -> None:
    """Scaffold a new manifests repo: config, one environment, provider and deployment."""
    from reconciler.scaffold import init_repo

    directory.mkdir(parents=True, exist_ok=True)
    written = init_repo(directory, ci=ci)
    for p in written:
        out.print(f"created {p}")
    out.print(f"next: cd {directory} && reconciler validate && reconciler plan")


# --- plan / apply / status ---------------------------------------------------------

EnvOpt = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", help="Only this environment (repeatable; default: all)."),
]


def _color() -> bool:
    import os

    if os.environ.get("NO_COLOR"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or sys.stdout.isatty()


@app.command()
def plan(
    env: EnvOpt = None,
    ref: Annotated[
        str | None, typer.Option("--ref", help="Plan the manifests at a git ref (no checkout).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the plan as a PR comment.")
    ] = False,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Save the plan for `apply --plan`.")
    ] = None,
    allow_delete: Annotated[
        bool, typer.Option("--allow-delete", help="Plan deletes in protected environments.")
    ] = False,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 2 when there are changes.")
    ] = False,
    comment: Annotated[
        bool,
        typer.Option("--comment", help="Post the plan to the pull request (one comment, updated)."),
    ] = False,
    pr: Annotated[
        int | None, typer.Option("--pr", help="The pull request (default: from the CI event).")
    ] = None,
) -> None:
    """Show what apply would change: per environment, create/update/replace/delete."""
    from reconciler.render import render_human, render_json, render_markdown
    from reconciler.session import build_plan, state_store

    settings = _globals().settings
    with state_store(settings) as store:
        _, p = build_plan(
            settings, store, ref=ref, environments=env or (), allow_delete=allow_delete
        )
    if out_file is not None:
        out_file.write_text(render_json(p), encoding="utf-8")
        err.print(f"plan saved to {out_file}")
    if as_json:
        sys.stdout.write(render_json(p))
    elif markdown:
        sys.stdout.write(render_markdown(p))
    else:
        sys.stdout.write(render_human(p, color=_color()))
    from reconciler import ci

    ci.append_step_summary(settings.env, render_markdown(p))
    if comment:
        _post_plan_comment(settings, render_markdown(p), pr)
    if detailed_exitcode and p.has_changes:
        _exit(2)


def _forge(settings: Settings) -> ForgeSource:
    from reconciler.approvals import ForgeSource
    from reconciler.session import approval_source

    source = approval_source(settings)
    if not isinstance(source, ForgeSource):
        raise ConfigError(
            "posting to a pull request needs approvals.source github or gitlab in reconciler.yaml"
        )
    return source


def _post_plan_comment(settings: Settings, body: str, pr: int | None) -> None:
    from reconciler import ci
    from reconciler.approvals import PLAN_COMMENT_MARKER

    number = pr or ci.detect(settings.env).pull_request
    if number is None:
        raise ConfigError("--comment needs a pull request: --pr N, or run on a PR event")
    source = _forge(settings)
    try:
        source.upsert_comment(number, body, PLAN_COMMENT_MARKER)
    finally:
        source.close()
    err.print(f"plan posted to pull request #{number}")


@app.command()
def approvals(
    commit: Annotated[
        str | None, typer.Option("--commit", help="The commit (default: CI's, else HEAD).")
    ] = None,
    pr: Annotated[
        int | None, typer.Option("--pr", help="Judge this pull request (default: CI's).")
    ] = None,
    status: Annotated[
        bool, typer.Option("--status", help="Post a `reconciler/approvals` commit status.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Judge approvals for each environment the change touches; exit 0 met, 3 not."""
    from reconciler import ci
    from reconciler.session import judge_approvals, state_store

    settings = _globals().settings
    ctx = ci.detect(settings.env)
    pr = pr or ctx.pull_request
    commit = commit or ctx.commit
    with state_store(settings) as store:
        p, verdicts = judge_approvals(settings, store, commit=commit, pull_request=pr)
    passed = all(g.passed for g in verdicts.values())
    if as_json:
        import json

        doc = {
            "commit": p.commit,
            "pull_request": pr,
            "passed": passed,
            "environments": {
                e: {
                    "passed": g.passed,
                    "reasons": g.reasons,
                    "verdict": g.verdict.as_dict() if g.verdict else None,
                }
                for e, g in verdicts.items()
            },
        }
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        if not verdicts:
            out.print("no environment has changes: nothing needs approval")
        for e, g in verdicts.items():
            if g.passed and g.verdict is None:
                out.print(f"{e}: no approvals required", markup=False)
            elif g.passed:
                out.print(
                    f"{e}: approved: {g.verdict.summary() if g.verdict else ''}", markup=False
                )
            else:
                out.print(f"{e}: BLOCKED: {'; '.join(g.reasons)}", markup=False)
            if g.verdict is not None:
                for line in g.verdict.explain():
                    out.print(f"    {line}", markup=False)
    if status:
        sha = (
            ctx.head_sha
            or next(
                (g.verdict.head_sha for g in verdicts.values() if g.verdict and g.verdict.head_sha),
                None,
            )
            or p.commit
        )
        if sha is None:
            raise ConfigError("--status needs a commit: run in a git repo or pass --commit")
        blocked = [e for e, g in verdicts.items() if not g.passed]
        text = (
            "approved for " + ", ".join(verdicts) if verdicts and not blocked
            else "nothing needs approval" if not blocked
            else "; ".join(f"{e}: {_status_reason(verdicts[e])}" for e in blocked)
        )  # fmt: skip
        source = _forge(settings)
        try:
            source.set_status(sha, "success" if passed else "failure", text)
        finally:
            source.close()
        err.print(
            f"status reconciler/approvals set on {sha[:7]}: {'success' if passed else 'failure'}"
        )
    if not passed:
        _exit(3)


def _status_reason(g: GateResult) -> str:
    return g.verdict.summary() if g.verdict is not None else "; ".join(g.reasons)


@contextmanager
def _progress() -> Iterator[ProgressFn | None]:
    """A live counter on a terminal; elsewhere the executor's log line per change."""
    if not err.is_terminal:
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err) as bar:
        task = bar.add_task("applying", total=None)
        counts = {"applied": 0, "failed": 0, "skipped": 0}

        def update(res: ChangeResult) -> None:
            counts[res.outcome] = counts.get(res.outcome, 0) + 1
            bar.update(
                task,
                description=f"{res.change.environment}: {counts['applied']} applied, "
                f"{counts['failed']} failed — last {res.change.address}",
            )

        yield update


@app.command()
def apply(
    env: EnvOpt = None,
    plan_file: Annotated[
        Path | None, typer.Option("--plan", help="Apply exactly this saved plan.")
    ] = None,
    commit: Annotated[
        str | None, typer.Option("--commit", help="Apply the manifests at this commit.")
    ] = None,
    allow_delete: Annotated[
        bool, typer.Option("--allow-delete", help="Allow deletes in protected environments.")
    ] = False,
    rollback_on_failure: Annotated[
        bool,
        typer.Option("--rollback-on-failure", help="Restore what this run changed on failure."),
    ] = False,
    break_lock: Annotated[
        bool, typer.Option("--break-lock", help="Take the lock from another run (recorded).")
    ] = False,
    parallelism: Annotated[
        int | None, typer.Option("--parallelism", min=1, max=256, help="Concurrent changes.")
    ] = None,
    override_window: Annotated[
        bool,
        typer.Option("--override-window", help="Apply outside a deploy window (recorded)."),
    ] = False,
    pr: Annotated[
        int | None, typer.Option("--pr", help="Judge approvals on this pull request.")
    ] = None,
    heal: Annotated[
        bool, typer.Option("--heal", help="Re-apply recorded specs of drifted instances.")
    ] = False,
) -> None:
    """Apply the changes; exit 0 applied, 1 failed, 3 blocked, 4 locked."""
    from reconciler import ci
    from reconciler.session import ApplyOptions, run_apply, state_store

    settings = _globals().settings
    if heal:
        _heal(settings, env or (), break_lock=break_lock, parallelism=parallelism)
        return
    ctx = ci.detect(settings.env)
    opts = ApplyOptions(
        environments=env or (),
        plan_file=plan_file,
        commit=commit or (ctx.commit if plan_file is None else None),
        allow_delete=allow_delete,
        rollback_on_failure=rollback_on_failure,
        break_lock=break_lock,
        parallelism=parallelism,
        override_window=override_window,
        pull_request=pr or ctx.pull_request,
    )
    with state_store(settings) as store, _progress() as progress:
        report = run_apply(settings, store, opts, progress=progress)
    for r in report.results:
        g = report.gates.get(r.environment)
        if r.outcome == "noop":
            out.print(f"{r.environment}: no changes")
        elif r.outcome == "blocked":
            out.print(f"{r.environment}: BLOCKED: {r.message}", markup=False)
            if g is not None and g.verdict is not None:
                for line in g.verdict.explain():
                    out.print(f"    {line}", markup=False)
        else:
            c = r.counts()
            line = f"{r.environment}: {r.outcome} (run {r.run_id}): {c['applied']} applied"
            if c["failed"] or c["skipped"]:
                line += f", {c['failed']} failed, {c['skipped']} skipped"
            out.print(line, markup=False)
            for res in r.results:
                if res.outcome != "applied":
                    out.print(f"    {res.change.address}: {res.outcome}: {res.error}", markup=False)
            if r.restored:
                out.print(f"    restored {len(r.restored)} change(s) (--rollback-on-failure)")
    ci.append_step_summary(settings.env, report.summary_markdown())
    _exit(report.exit_code)


def _heal(
    settings: Settings,
    envs: list[str] | tuple[str, ...],
    *,
    break_lock: bool,
    parallelism: int | None,
) -> None:
    from reconciler import drift as d
    from reconciler.load import load
    from reconciler.session import state_store

    loaded = load(settings)
    with state_store(settings) as store:
        report = d.detect_drift(
            store,
            loaded.desired.providers,
            repo_root=settings.repo,
            env=settings.env,
            environments=envs,
        )
        results = d.heal(
            store,
            report,
            loaded.desired.providers,
            repo_root=settings.repo,
            env=settings.env,
            commit=loaded.commit,
            break_lock=break_lock,
            parallelism=parallelism or settings.parallelism,
        )
    if not results:
        out.print("nothing drifted: nothing to heal")
    for r in results:
        c = r.counts()
        out.print(
            f"{r.environment}: healed {c['applied']}, failed {c['failed']} (run {r.run_id})",
            markup=False,
        )
    if any(r.outcome == "failed" for r in results):
        _exit(1)


@app.command()
def status(
    env: EnvOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """What is recorded as deployed where (and when schedules run next)."""
    from reconciler.session import state_store
    from reconciler.status import collect_status, render_status

    settings = _globals().settings
    with state_store(settings) as store:
        rows = collect_status(store, env or ())
    if as_json:
        import json

        sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_status(rows))


# --- drift / history ----------------------------------------------------------------


@app.command()
def drift(
    env: EnvOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Compare live provider state with what was recorded; exit 2 when anything drifted."""
    from reconciler.drift import detect_drift
    from reconciler.load import load
    from reconciler.session import state_store

    settings = _globals().settings
    loaded = load(settings)
    with state_store(settings) as store:
        report = detect_drift(
            store,
            loaded.desired.providers,
            repo_root=settings.repo,
            env=settings.env,
            environments=env or (),
        )
    if as_json:
        import json

        doc = {
            e: [
                {
                    "kind": i.key.kind,
                    "name": i.key.name,
                    "provider": i.provider,
                    "status": i.status,
                    "error": i.error,
                    "diff": [
                        {"path": d.path, "before": d.before, "after": d.after} for d in i.diff
                    ],
                }
                for i in items
            ]
            for e, items in report.environments.items()
        }
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        from reconciler.render._common import fmt

        for e, items in report.environments.items():
            bad = [i for i in items if i.status != "in-sync"]
            out.print(f"{e}: {len(items) - len(bad)} in sync, {len(bad)} drifted", markup=False)
            for i in bad:
                out.print(
                    f"  {i.address} ({i.provider}): {i.status}"
                    + (f": {i.error}" if i.error else ""),
                    markup=False,
                )
                for d in i.diff:
                    out.print(
                        f"      {d.path}: recorded {fmt(d.before)}, live {fmt(d.after)}",
                        markup=False,
                    )
    if report.drifted:
        _exit(2)


@app.command()
def rollback(
    commits: Annotated[
        list[str] | None, typer.Argument(help="Commits to revert (newest first is found).")
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Revert every manifest change after COMMIT.")
    ] = None,
    branch: Annotated[
        str | None, typer.Option("--branch", help="Commit on this new branch instead.")
    ] = None,
    push: Annotated[bool, typer.Option("--push", help="Push the branch to origin.")] = False,
    open_pr: Annotated[
        bool, typer.Option("--open-pr", help="Open a pull request for the rollback.")
    ] = False,
) -> None:
    """Write a revert commit (like git revert) that apply records as a rollback."""
    from reconciler.rollback import rollback as do_rollback
    from reconciler.session import state_store

    settings = _globals().settings
    with state_store(settings) as store:
        r = do_rollback(
            settings, store, commits or (), to=to, branch=branch, push=push, open_pr=open_pr
        )
    where = f" on branch {r.branch}" if r.branch else ""
    out.print(f"{r.commit[:12]} {r.subject}{where}", markup=False)
    for sha in r.reverted:
        out.print(f"  reverts {sha[:12]}", markup=False)
    if r.pushed:
        out.print(f"pushed {r.branch or 'the current branch'} to origin", markup=False)
    if r.pull_request is not None:
        out.print(f"pull request #{r.pull_request}: {r.pull_request_url}", markup=False)
    elif not r.branch:
        out.print("next: reconciler plan, then reconciler apply (recorded as a rollback)")


@app.command()
def watch(
    env: EnvOpt = None,
    apply_: Annotated[
        bool,
        typer.Option("--apply", help="Also apply environments that need no approvals."),
    ] = False,
) -> None:
    """Re-validate and re-plan on every save; Ctrl-C to stop."""
    from reconciler import watch as w

    def write(text: str) -> None:  # plain and flushed: a big plan through rich is slow
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    session = w.WatchSession(_globals().settings, tuple(env or ()), apply_, write)
    try:
        w.run(session.settings, session.on_change)
    except KeyboardInterrupt:
        out.print("stopped")


@app.command()
def history(
    env: EnvOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many runs.")] = 50,
) -> None:
    """Runs, newest first: commit, trigger, pull request, approvers, outcome, rollbacks."""
    from reconciler.history import collect_history, render_history
    from reconciler.session import manifest_repo, state_store

    settings = _globals().settings
    with state_store(settings) as store:
        rows = collect_history(store, manifest_repo(settings), env or (), limit=limit)
    if as_json:
        import json

        sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_history(rows))


# --- entry point -------------------------------------------------------------------


def _print_error(e: ReconcilerError) -> None:
    err.print(f"error: {log.redact(e.message)}", markup=False)
    if e.details:
        err.print(log.redact(e.details), markup=False)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI; map every expected failure to one line and its exit code."""
    code = EXIT_OK
    try:
        # Without standalone mode click returns (not raises) the code of typer.Exit.
        returned = app(args=argv, standalone_mode=False)
        if isinstance(returned, int):
            code = returned
    except ReconcilerError as e:
        _print_error(e)
        code = e.exit_code
    except typer.Exit as e:
        code = e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    except Exception as e:  # usage errors and anything unexpected
        show = getattr(e, "show", None)
        if isinstance(e, typer.Abort):
            err.print("aborted")
            code = EXIT_ERROR
        elif callable(show) and isinstance(getattr(e, "exit_code", None), int):
            # click's usage errors (typer vendors click, so match by shape, not class)
            show(file=sys.stderr)
            code = e.exit_code  # type: ignore[attr-defined]
        else:
            err.print(f"internal error: {log.redact(f'{type(e).__name__}: {e}')}", markup=False)
            err.print("this is a bug in reconciler; re-run with -v and report it", markup=False)
            if _g is not None and _g.verbosity > 0:
                import traceback

                err.print(log.redact(traceback.format_exc()), markup=False)
            code = EXIT_ERROR
    sys.exit(code)
