"""What every command needs: the state store, the manifests repo and the secret values
that must be registered for redaction before anything is rendered."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from reconciler.config import Settings
from reconciler.gitrepo import ManifestRepo
from reconciler.manifests import Desired
from reconciler.redaction import register_desired
from reconciler.state import open_state
from reconciler.state.base import StateStore


@contextmanager
def open_store(settings: Settings, *, read_only: bool = False) -> Iterator[StateStore]:
    """The configured state, closed when the command is done. `read_only` for commands
    that only look (plan, drift, status, history, approvals, watch): such a store never
    creates, migrates or writes the state."""
    store = open_state(
        settings.state_url, repo_root=settings.repo, env=settings.env, read_only=read_only
    )
    try:
        yield store
    finally:
        store.close()


def manifest_repo(settings: Settings) -> ManifestRepo:
    return ManifestRepo(settings.repo)


def secret_env(settings: Settings, desired: Desired) -> dict[str, str]:
    """The secret values plan may fingerprint: those of every secret the manifests refer
    to, read from the documents (`referenced_names`, a superset of what the instances
    name; a fingerprint is looked up by name), not by walking every instance. All are
    registered first, so no output can show one."""
    names = register_desired(desired, settings.env)
    return {n: settings.env[n] for n in names if n in settings.env}
