"""What every command needs: the state store, the manifests repo and the secret values
that must be registered for redaction before anything is rendered."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from reconciler import ci
from reconciler.config import CONFIG_FILE, Settings
from reconciler.errors import ConfigError
from reconciler.gitrepo import ManifestRepo
from reconciler.manifests import Desired
from reconciler.redaction import register_desired
from reconciler.state import open_state
from reconciler.state.base import StateStore, current_user


def require_manifests(settings: Settings) -> None:
    """Refuse a folder that is not a manifests repo (no reconciler.yaml, none of the
    manifest paths), before anything is read or created: run there by mistake, validate
    would say "0 documents", plan "No changes" and apply would make a state."""
    root = settings.repo
    if (root / CONFIG_FILE).exists():
        return
    if any((root / p).exists() for p in settings.manifest_paths):
        return
    paths = ", ".join(f"{p}/" for p in settings.manifest_paths)
    raise ConfigError(
        f"no manifests in {root}: it has no {CONFIG_FILE} and no {paths}",
        details="run `reconciler init` to start a manifests repo here, "
        "or pass --repo with the repo's folder",
    )


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


def applied_by(settings: Settings) -> str:
    """Who a run is recorded as applied by: the forge's actor in CI, else the git
    identity of the repo, else the login name."""
    return ci.actor(settings.env) or manifest_repo(settings).identity() or current_user()


def secret_env(settings: Settings, desired: Desired) -> dict[str, str]:
    """The secret values plan may fingerprint: those of every secret the manifests refer
    to, read from the documents (`referenced_names`, a superset of what the instances
    name; a fingerprint is looked up by name), not by walking every instance. All are
    registered first, so no output can show one."""
    names = register_desired(desired, settings.env)
    return {n: settings.env[n] for n in names if n in settings.env}
