"""What every command needs: the state store, the manifests repo and the secret values
that must be registered for redaction before anything is rendered."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from reconciler.config import Settings
from reconciler.gitrepo import ManifestRepo
from reconciler.manifests import Desired
from reconciler.redaction import register_desired, secret_names
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


def secret_env(
    settings: Settings, desired: Desired, environments: Sequence[str] = ()
) -> dict[str, str]:
    """The secret values plan may fingerprint. Every secret the manifests refer to (in
    all environments) is registered first, so no output can show one."""
    register_desired(desired, settings.env)
    names = secret_names(desired, environments)
    return {n: settings.env[n] for n in names if n in settings.env}
