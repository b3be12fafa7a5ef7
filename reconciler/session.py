"""One invocation's collaborators, built once: the resolved settings, the manifests
repo, the state opener, the provider factory, the approval sources, the clock and the
redactor.

The CLI builds a `Session` per command (`cli_base`), the agent and the dashboard one
per process; everything below the command line (`engine/`) takes it instead of
rebuilding its pieces from `Settings` (as Terraform's backend hands one `Operation`
down). It is frozen: what changes during a command lives in the request and its stores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from reconciler.config import ApprovalsConfig, Settings
from reconciler.gitrepo import ManifestRepo
from reconciler.redaction import Redactor
from reconciler.state.urls import passwords

if TYPE_CHECKING:
    from reconciler.approvals import ApprovalSource
    from reconciler.instances import ProviderConfig
    from reconciler.load import Loaded
    from reconciler.providers import Provider
    from reconciler.runs.store import ExecutionStore
    from reconciler.state.base import StateStore


class Clock(Protocol):
    """Where the time comes from: injected so that tests never wait on the wall clock."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True)
class Session:
    settings: Settings
    redactor: Redactor = field(default_factory=lambda: Redactor())
    clock: Clock = field(default_factory=SystemClock)
    #: -v minus -q of the command line (0 outside it).
    verbosity: int = 0
    #: One ManifestRepo per thread: a git.Repo (its cat-file processes) is not safe to
    #: share between the agent's workers or the dashboard's refresher and requests.
    _repos: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    @classmethod
    def start(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        redactor: Redactor | None = None,
        verbosity: int = 0,
    ) -> Session:
        """The session of `settings`: the forge tokens and the fingerprint key of its
        environment, and the state URL's password, are secrets from here on (the stores,
        the executions and the agents' membership all connect with that URL)."""
        redactor = redactor if redactor is not None else Redactor()
        _add_settings(redactor, settings)
        return cls(settings, redactor, clock or SystemClock(), verbosity)

    def with_settings(self, settings: Settings) -> Session:
        """The same collaborators over other settings (the agent's own clone)."""
        _add_settings(self.redactor, settings)
        return replace(self, settings=settings, _repos=threading.local())

    @property
    def repo(self) -> ManifestRepo:
        repo: ManifestRepo | None = getattr(self._repos, "repo", None)
        if repo is None:
            repo = self._repos.repo = ManifestRepo(self.settings.repo)
        return repo

    @contextmanager
    def open_store(self, *, read_only: bool = False) -> Iterator[StateStore]:
        """The configured state, closed when the block ends. `read_only` for what only
        looks (plan, drift, status, history, approvals, watch): such a store never
        creates, migrates or writes the state."""
        from reconciler.state import open_state

        s = self.settings
        store = open_state(s.state_url, repo_root=s.repo, env=s.env, read_only=read_only)
        try:
            yield store
        finally:
            store.close()

    def open_executions(self, *, read_only: bool = False) -> ExecutionStore:
        """The executions kept beside the state; the caller closes it."""
        from reconciler.runs.store import open_executions

        s = self.settings
        return open_executions(s.state_url, repo_root=s.repo, env=s.env, read_only=read_only)

    def provider(self, config: ProviderConfig) -> Provider:
        """A client for one configured provider; the caller closes it."""
        from reconciler.providers import make_provider

        s = self.settings
        return make_provider(config, repo_root=s.repo, env=s.env, register=self.redactor.add)

    def approval_source(self, approvals: ApprovalsConfig) -> ApprovalSource | None:
        """The forge (or file) an approval configuration names, configured from this
        session's environment; None for `source: none`. The caller closes it (the gate
        keeps one per configuration for its command)."""
        from reconciler.forge import make_source

        return make_source(replace(self.settings, approvals=approvals), self.redactor.add)

    def load(self, ref: str | None = None, *, paths: Sequence[str] = ()) -> Loaded:
        """The manifests at `ref` (or the working tree) through this session's repo; the
        secrets they refer to (`Loaded.secrets`) are the redactor's from here on, before
        the providers' checks (whose refusals are rendered) run."""
        from reconciler.load import load

        return load(self.settings, ref, paths=paths, repo=self.repo, register=self.redactor.add)


def _add_settings(redactor: Redactor, settings: Settings) -> None:
    redactor.add_environment(settings.env)
    redactor.add(passwords(settings.state_url))
