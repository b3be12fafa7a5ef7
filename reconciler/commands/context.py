"""What every command needs: the state store, the manifests repo and the secret values
that must be registered for redaction before anything is rendered."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from reconciler.config import Settings
from reconciler.gitrepo import ManifestRepo
from reconciler.log import register_secrets
from reconciler.manifests import Desired
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
    """The secret values plan may fingerprint; registered so no output can show them."""
    names: set[str] = set()
    for env, insts in desired.instances.items():
        if environments and env not in environments:
            continue
        for inst in insts.values():
            names.update(inst.secret_names)
    for provs in desired.providers.values():
        for pc in provs.values():
            names.update(pc.credentials.values())
    values = {n: settings.env[n] for n in names if n in settings.env}
    register_secrets(values.values())
    return values
