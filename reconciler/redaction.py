"""Which values are secrets, and the `Redactor` a session owns: the values it has been
told of and the masking every output path of that session takes.

Values come from the injected environment (`Settings.env`), never from `os.environ`
directly. The session adds the forge tokens and the fingerprint key as soon as its
settings are read; what it loads adds the value of every `secretEnv` reference and
every provider credential, in every environment (`Loaded.secrets`: a value may have been
copied anywhere); what reads only the state adds the references its recorded specs
hold. What finds a secret at run time (an auth header, a token, a database password)
is handed a `Register` (the redactor's `add`) by whoever built it from the session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from reconciler.log import SecretValues, register_secrets

#: Environment variables whose values are secrets whatever the manifests say: forge
#: tokens (GitHub, GitLab) and the key of the secret fingerprints.
ENV_SECRET_VARS = (
    "RECONCILER_FINGERPRINT_KEY",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "GITLAB_TOKEN",
    "CI_JOB_TOKEN",
)

#: Tells a redactor of secret values found at run time: `Redactor.add`, handed down by
#: whoever built the finder from the session.
Register = Callable[[Iterable[str | None]], None]


def environment_secrets(env: Mapping[str, str]) -> list[str | None]:
    """The forge tokens and the fingerprint key of the injected environment."""
    return [env.get(name) for name in ENV_SECRET_VARS]


def to_backstop(values: Iterable[str | None]) -> None:
    """The `Register` of library use, where no session exists: only the logger's
    process-wide backstop learns the values, so log lines never show them."""
    register_secrets(values)


class Redactor:
    """The secret values one session knows of, and the masking every output path of
    that session takes (`emit`, views, CI summaries, PR comments, notices, dashboard
    responses). It masks with its own values only, so two sessions in one process never
    mask (or reveal, by masking) each other's; each value also feeds the logger's
    process-wide registry, the backstop of log lines, which no session renders."""

    def __init__(self) -> None:
        self._values = SecretValues()

    def add(self, values: Iterable[str | None]) -> None:
        fresh = [v for v in values if v]
        self._values.add_all(fresh)
        register_secrets(fresh)

    def add_environment(self, env: Mapping[str, str]) -> None:
        """The forge tokens and the fingerprint key of the injected environment."""
        self.add(environment_secrets(env))

    def is_secret(self, text: str) -> bool:
        return self._values.is_secret(text)

    def redact(self, text: str) -> str:
        return self._values.redact(text)

    def redact_data(self, value: Any) -> Any:
        return self._values.redact_data(value)
