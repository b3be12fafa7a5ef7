"""What every operation needs before it starts: a manifests repo to work in, who it
runs as, and the secret values plan may fingerprint."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from reconciler import ci
from reconciler.config import CONFIG_FILE
from reconciler.errors import ConfigError
from reconciler.gate import Gate, Mode
from reconciler.instances import secret_refs
from reconciler.load import Loaded, provider_credential_names, referenced_names
from reconciler.manifests import Desired
from reconciler.redaction import ENV_SECRET_VARS
from reconciler.session import Session
from reconciler.state.base import StateStore, current_user


def require_manifests(session: Session) -> None:
    """Refuse a folder that is not a manifests repo (no reconciler.yaml, none of the
    manifest paths), before anything is read or created: run there by mistake, validate
    would say "0 documents", plan "No changes" and apply would make a state."""
    root = session.settings.repo
    if (root / CONFIG_FILE).exists():
        return
    paths = session.settings.manifest_paths
    if any((root / p).exists() for p in paths):
        return
    shown = ", ".join(f"{p}/" for p in paths)
    raise ConfigError(
        f"no manifests in {root}: it has no {CONFIG_FILE} and no {shown}",
        details="run `reconciler init` to start a manifests repo here, "
        "or pass --repo with the repo's folder",
    )


def applied_by(session: Session) -> str:
    """Who a run is recorded as applied by: the forge's actor in CI, else the git
    identity of the repo, else the login name."""
    return ci.actor(session.settings.env) or session.repo.identity() or current_user()


def secret_env(session: Session, desired: Desired) -> dict[str, str]:
    """The secret values plan may fingerprint: those of every secret the manifests refer
    to, read from the documents (`referenced_names`, a superset of what the instances
    name; a fingerprint is looked up by name), not by walking every instance. Loading
    made them the session's secrets already, so no output can show one."""
    env = session.settings.env
    return {n: env[n] for n in referenced_names(desired) if n in env}


def open_gate(
    session: Session,
    store: StateStore,
    target: Loaded,
    *,
    now: datetime,
    mode: Mode,
    pull_request: int | None = None,
    reverts_exactly: bool = False,
    override_window: bool = False,
    secret_env: Mapping[str, str] | None = None,
) -> Gate:
    """The gate of one operation, over the session's repo and approval sources; the
    caller closes it (it closes the sources it opened)."""
    return Gate(
        settings=session.settings,
        store=store,
        target=target,
        source_for=session.approval_source,
        now=now,
        mode=mode,
        pull_request=pull_request,
        reverts_exactly=reverts_exactly,
        override_window=override_window,
        secret_env=secret_env,
        repo=session.repo,
        register=session.redactor.add,
    )


def register_recorded(session: Session, store: StateStore) -> None:
    """For what reads only the state (status, history, run): the secrets its recorded
    specs and the working tree's providers refer to are the session's from here on."""
    names = provider_credential_names(session.settings, session.repo)
    session.redactor.add(recorded_secrets(store, session.settings.env, names))


def recorded_secrets(
    store: StateStore, env: Mapping[str, str], credential_names: Iterable[str]
) -> list[str | None]:
    """For what reads only the state (status, history): the values of the secrets its
    recorded specs refer to, of the providers' credentials (`credential_names`), and
    of the environment's own secret variables."""
    names = set(credential_names)
    for environment in store.environments():
        for rec in store.applied(environment).values():
            names.update(rec.secret_fingerprints)
            names.update(secret_refs(rec.spec))
    return [*(env.get(name) for name in names), *(env.get(n) for n in ENV_SECRET_VARS)]
