"""Which values are secrets: registered for redaction (`reconciler.log`) before anything
is rendered, so that no output path can show them.

Values come from the injected environment (`Settings.env`), never from `os.environ`
directly. A command registers the forge tokens and the fingerprint key as soon as its
settings are read; once manifests are loaded, the value of every `secretEnv` reference
and every provider credential, in every environment (not only the ones the command
works on: a value may have been copied anywhere); commands that read only the state
register the references its recorded specs hold.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from reconciler import log
from reconciler.instances import secret_refs
from reconciler.log import register_secrets

if TYPE_CHECKING:
    from reconciler.manifests import Desired
    from reconciler.state.base import StateStore

_CONVENTIONAL_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*$")
#: Environment variables whose values are secrets whatever the manifests say: forge
#: tokens (GitHub, GitLab) and the key of the secret fingerprints.
ENV_SECRET_VARS = (
    "RECONCILER_FINGERPRINT_KEY",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "GITLAB_TOKEN",
    "CI_JOB_TOKEN",
)


def register_environment(env: Mapping[str, str]) -> None:
    """The forge tokens and the fingerprint key of the injected environment."""
    register_secrets(env.get(name) for name in ENV_SECRET_VARS)


def referenced_names(desired: Desired) -> set[str]:
    """Every secret name the expanded instances and providers refer to, read from the
    documents (a deployment's `env` and its overrides', a schedule's `input`): far
    fewer values to walk than every expanded instance, so `validate` and `plan` stay
    fast. `tests/test_redact.py` checks it against walking the instances."""
    from reconciler.manifests.models import SecretRef

    names: set[str] = set()
    for d in desired.manifests.deployments.values():
        dspec = d.model.spec
        for env in (dspec.env, *(o.env or {} for o in dspec.overrides.values())):
            names.update(v.secret_env for v in env.values() if isinstance(v, SecretRef))
    for sched in desired.manifests.schedules.values():
        sspec = sched.model.spec
        for data in (sspec.input, *(o.input or {} for o in sspec.overrides.values())):
            names.update(secret_refs(data))
    for provs in desired.providers.values():
        for pc in provs.values():
            names.update(pc.credentials.values())
    return names


def desired_secrets(desired: Desired, env: Mapping[str, str]) -> dict[str, str]:
    """Every secret value the manifests refer to, in all environments, by name
    (`referenced_names`). A credential "name" that is not set and not written like a
    variable (`tokenEnv: hunter2`) may be the credential itself, typed in the wrong
    place: it is a secret too (named by itself)."""
    found = {name: env[name] for name in referenced_names(desired) if env.get(name)}
    for provs in desired.providers.values():
        for pc in provs.values():
            for name in pc.credentials.values():
                if name not in env and not _CONVENTIONAL_VAR.match(name):
                    found[name] = name
    return found


def register_desired(desired: Desired, env: Mapping[str, str]) -> set[str]:
    """Every secret value the manifests refer to (`desired_secrets`) and the
    environment's own; returns the names the manifests refer to."""
    register_environment(env)
    register_secrets(desired_secrets(desired, env).values())
    return referenced_names(desired)


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


class Redactor:
    """The secret values one session knows of, and the masking every output path of
    that session takes (`emit`, views, CI summaries, PR comments, notices, dashboard
    responses). The logger's process-wide registry is fed from here as a backstop for
    log lines, which no session renders."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str | None]) -> None:
        fresh = [v for v in values if v]
        with self._lock:
            self._values.update(fresh)
        register_secrets(fresh)

    def add_environment(self, env: Mapping[str, str]) -> None:
        """The forge tokens and the fingerprint key of the injected environment."""
        self.add(env.get(name) for name in ENV_SECRET_VARS)

    def redact(self, text: str) -> str:
        return log.redact(text)

    def redact_data(self, value: Any) -> Any:
        return log.redact_data(value)
