"""Provider clients for one environment's run: made on first use, closed together.

The pool takes a factory so the executor never needs to know where a provider comes
from: the CLI passes `entry_point_factory` (plugins found by entry point), in-process
tests pass a function returning an in-memory provider (`providers.testing`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from reconciler.errors import ProviderError
from reconciler.instances import ProviderConfig
from reconciler.log import get_logger
from reconciler.providers import make_provider
from reconciler.providers.base import Provider
from reconciler.redaction import Register, to_backstop

log = get_logger("reconciler.providers")

#: Makes the client for one configured provider.
ProviderFactory = Callable[[ProviderConfig], Provider]


def entry_point_factory(
    *, repo_root: Path, env: Mapping[str, str], register: Register = to_backstop
) -> ProviderFactory:
    """Clients of the plugins registered in the `reconciler.providers` entry points;
    `register`: the session's redactor (the default only for library use)."""
    return functools.partial(make_provider, repo_root=repo_root, env=env, register=register)


class ProviderPool:
    """Clients by provider name; thread-safe, each made once."""

    def __init__(self, configs: Mapping[str, ProviderConfig], factory: ProviderFactory) -> None:
        self._configs = configs
        self._factory = factory
        self._made: dict[str, Provider] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_entry_points(
        cls,
        configs: Mapping[str, ProviderConfig],
        *,
        repo_root: Path,
        env: Mapping[str, str],
        register: Register = to_backstop,
    ) -> ProviderPool:
        return cls(configs, entry_point_factory(repo_root=repo_root, env=env, register=register))

    def get(self, name: str) -> Provider:
        made = self._made.get(name)  # the common case needs no lock
        if made is not None:
            return made
        with self._lock:
            if name not in self._made:
                config = self._configs.get(name)
                if config is None:
                    raise ProviderError(
                        f"provider {name!r} is no longer declared for this environment; "
                        "restore its Provider manifest to change what it holds"
                    )
                self._made[name] = self._factory(config)
            return self._made[name]

    def close(self) -> None:
        with self._lock:
            made, self._made = list(self._made.values()), {}
        for p in made:
            try:
                p.close()
            except Exception:  # closing must never hide the run's real outcome
                log.debug("provider close failed", provider=p.name, exc_info=True)

    def __enter__(self) -> ProviderPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
