"""The command line's arguments and options, declared once (the CLI's signatures use
these names; help texts live here)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# --- global options -------------------------------------------------------------------
Repo = Annotated[Path, typer.Option("--repo", help="The manifests repo (default: .).")]
State = Annotated[str | None, typer.Option("--state", help="State URL (env RECONCILER_STATE).")]
LogFormat = Annotated[
    str | None, typer.Option("--log-format", help="console or json (json when CI is set).")
]
ApprovalsFile = Annotated[
    Path | None,
    typer.Option(
        "--approvals-file",
        help="The approvals document (source: file), outside the repo "
        "(env RECONCILER_APPROVALS_FILE).",
    ),
]
LocalRegistry = Annotated[
    Path | None,
    typer.Option(
        "--local-registry",
        help="The local provider's SQLite registry (default: .reconciler/local-registry.db; "
        "env RECONCILER_LOCAL_REGISTRY, an absolute path).",
    ),
]
Verbose = Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logs.")]
Quiet = Annotated[int, typer.Option("-q", "--quiet", count=True, help="Fewer logs.")]

# --- shared ---------------------------------------------------------------------------
Env = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", help="Only this environment (repeatable; default: all)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print as JSON.")]
Ref = Annotated[str | None, typer.Option("--ref", help="Read the manifests at a git ref.")]
Pr = Annotated[int | None, typer.Option("--pr", help="The pull request (default: CI's).")]
BreakLock = Annotated[
    bool, typer.Option("--break-lock", help="Take the lock from another run (recorded).")
]
Parallelism = Annotated[
    int | None, typer.Option("--parallelism", min=1, max=256, help="Concurrent changes.")
]
AllowDelete = Annotated[
    bool, typer.Option("--allow-delete", help="Allow deletes in protected environments.")
]

# --- validate, schema, init -----------------------------------------------------------
Paths = Annotated[list[str] | None, typer.Argument(help="Folders or files to check.")]
SchemaDir = Annotated[Path, typer.Option("--out", help="Folder for the schemas.")]
Directory = Annotated[Path, typer.Argument(help="Where to create the repo.")]
Ci = Annotated[str, typer.Option("--ci", help="Pipelines: github, gitlab or none.")]
InitApprovals = Annotated[
    str | None,
    typer.Option(
        "--approvals",
        help="Where approvals come from: github, gitlab, file or none "
        "(default: the --ci forge; file with --ci none).",
    ),
]

# --- plan, approvals ------------------------------------------------------------------
Markdown = Annotated[bool, typer.Option("--markdown", help="Print as a PR comment.")]
PlanOut = Annotated[Path | None, typer.Option("--out", help="Save for apply --plan.")]
DetailedExitcode = Annotated[
    bool, typer.Option("--detailed-exitcode", help="Exit 2 when there are changes.")
]
Comment = Annotated[bool, typer.Option("--comment", help="Post the plan to the PR.")]
MetricsFile = Annotated[
    Path | None,
    typer.Option(
        "--metrics-file",
        help="Also write the outcome as Prometheus text (a textfile collector's file).",
    ),
]
Commit = Annotated[str | None, typer.Option("--commit", help="The commit (default: CI's).")]
Status = Annotated[bool, typer.Option("--status", help="Set the commit status.")]

# --- approve --------------------------------------------------------------------------
ApprovePr = Annotated[int, typer.Option("--pr", help="The pull request's number.")]
Reviewer = Annotated[str, typer.Option("--reviewer", help="Who approves (their login).")]
MergeCommit = Annotated[
    str | None, typer.Option("--commit", help="The commit it was merged as (default: HEAD).")
]
PrAuthor = Annotated[
    str | None,
    typer.Option("--author", help="The author's login (default: the head commit's author)."),
]
Title = Annotated[str | None, typer.Option("--title", help="The pull request's title.")]

# --- apply ----------------------------------------------------------------------------
PlanFile = Annotated[Path | None, typer.Option("--plan", help="Apply this saved plan.")]
RollbackOnFailure = Annotated[
    bool, typer.Option("--rollback-on-failure", help="Restore what a failed run changed.")
]
NoRevertPr = Annotated[
    bool,
    typer.Option(
        "--no-revert-pr",
        help="In CI, open no revert pull request after a check's onFail: rollback.",
    ),
]
OverrideWindow = Annotated[
    bool, typer.Option("--override-window", help="Apply outside a deploy window (recorded).")
]
RunTimeout = Annotated[
    float | None,
    typer.Option(
        "--run-timeout",
        min=0.001,
        help="Fail what is not done after this many seconds per run "
        "(env RECONCILER_RUN_TIMEOUT; reconciler.yaml runTimeoutSeconds).",
    ),
]
Heal = Annotated[bool, typer.Option("--heal", help="Re-apply drifted instances.")]

# --- rollback, watch, history ---------------------------------------------------------
Commits = Annotated[list[str] | None, typer.Argument(help="Commits to revert.")]
To = Annotated[str | None, typer.Option("--to", help="Revert every manifest change after it.")]
Branch = Annotated[str | None, typer.Option("--branch", help="Commit on this new branch.")]
Push = Annotated[bool, typer.Option("--push", help="Push the branch to origin.")]
OpenPr = Annotated[bool, typer.Option("--open-pr", help="Open a pull request.")]
WatchApply = Annotated[
    bool, typer.Option("--apply", help="Also apply environments that need no approvals.")
]
Limit = Annotated[int, typer.Option("--limit", min=1, help="At most this many runs.")]

# --- overview, show, serve ------------------------------------------------------------
Live = Annotated[
    bool, typer.Option("--live/--no-live", help="Read drift and health from the providers.")
]
Health = Annotated[
    bool,
    typer.Option("--health/--no-health", help="Read each instance's health from its provider."),
]
RunId = Annotated[str, typer.Argument(help="The run's id (from `reconciler history`).")]
Host = Annotated[
    str,
    typer.Option(
        "--host",
        help="Address to listen on; beyond loopback only with RECONCILER_DASHBOARD_TOKEN set.",
    ),
]
InsecureNoToken = Annotated[
    bool,
    typer.Option(
        "--insecure-no-token",
        help="Listen beyond loopback without RECONCILER_DASHBOARD_TOKEN: anyone who can "
        "reach the address reads every page, the API and /metrics (logged as a warning).",
    ),
]
Port = Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")]
Refresh = Annotated[
    str, typer.Option("--refresh", help="How often live state is read again (30s, 5m).")
]

# --- run, executions, metrics ---------------------------------------------------------
Deployment = Annotated[str, typer.Argument(help="The deployment's name.")]
RunEnv = Annotated[str, typer.Option("--env", "-e", help="The environment it is applied in.")]
Input = Annotated[str | None, typer.Option("--input", help="The input, a JSON object.")]
InputFile = Annotated[
    Path | None, typer.Option("--input-file", help="Read the input (a JSON object) from FILE.")
]
Deployments = Annotated[
    list[str] | None, typer.Option("--deployment", "-d", help="Only this deployment (repeatable).")
]
ExecStatus = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        help="Only this status (repeatable): pending, running, completed, "
        "failed, missed, skipped, cancelled.",
    ),
]
Since = Annotated[
    str | None, typer.Option("--since", help="Only since: a duration back (30m, 6h, 2d) or a time.")
]
ExecLimit = Annotated[int, typer.Option("--limit", min=1, help="At most this many executions.")]
ExecutionId = Annotated[str, typer.Argument(help="The execution's id.")]
PromoteFrom = Annotated[
    str, typer.Option("--from", help="The environment whose applied deployments are promoted.")
]
PromoteTo = Annotated[str, typer.Option("--to", help="The environment they are promoted to.")]
PromoteDeployments = Annotated[
    list[str] | None, typer.Argument(help="Only these deployments (default: all).")
]
EvalName = Annotated[str, typer.Argument(help="The Eval's name.")]
