"""`reconciler state migrate`: copy the recorded state to another backend."""

from __future__ import annotations

from contextlib import ExitStack, closing
from dataclasses import replace
from functools import partial

from reconciler.runs.store import copy_executions, open_executions, refuse_executions
from reconciler.session import Session
from reconciler.state import open_state
from reconciler.state.migrate import MigrationReport
from reconciler.state.migrate import migrate as copy_state
from reconciler.state.urls import passwords


def migrate(session: Session, source_url: str | None, target_url: str) -> MigrationReport:
    """From `source_url` (default: the configured state) to `target_url`; relative
    `sqlite:///` paths and `git://` refs are the manifests repo's. The executions go
    with it (after the state, into a target that has none)."""
    url = source_url or session.settings.state_url
    session.redactor.add([*passwords(url), *passwords(target_url)])
    source = open_state(url, repo_root=session.settings.repo, env=session.settings.env)
    try:
        target = open_state(target_url, repo_root=session.settings.repo, env=session.settings.env)
        try:
            with ExitStack() as stack:
                opened = partial(
                    open_executions, repo_root=session.settings.repo, env=session.settings.env
                )
                from_runs = stack.enter_context(closing(opened(url, read_only=True)))
                to_runs = stack.enter_context(closing(opened(target_url)))
                refuse_executions(to_runs)
                report = copy_state(source, target, env=session.settings.env)
                return replace(report, executions=copy_executions(from_runs, to_runs))
        finally:
            target.close()
    finally:
        source.close()
