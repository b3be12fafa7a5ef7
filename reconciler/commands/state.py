"""`reconciler state migrate`: copy the recorded state to another backend."""

from __future__ import annotations

from reconciler.config import Settings
from reconciler.state import open_state
from reconciler.state.migrate import MigrationReport
from reconciler.state.migrate import migrate as copy_state


def migrate(settings: Settings, source_url: str | None, target_url: str) -> MigrationReport:
    """From `source_url` (default: the configured state) to `target_url`; relative
    `sqlite:///` paths and `git://` refs are the manifests repo's."""
    source = open_state(source_url or settings.state_url, repo_root=settings.repo, env=settings.env)
    try:
        target = open_state(target_url, repo_root=settings.repo, env=settings.env)
        try:
            return copy_state(source, target, env=settings.env)
        finally:
            target.close()
    finally:
        source.close()
