"""What the state records, and the protocol every backend implements.

State answers "what did we apply, where, from which commit, in which run". Specs are
stored as applied, with secrets as references only; a keyed fingerprint of each
secret's value lets the plan notice a rotated secret without ever storing it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from reconciler.instances import InstanceKey
from reconciler.vocabulary import Action, ChangeOutcome, RunOutcome, Trigger

#: Bumped whenever a backend's on-disk layout changes; each backend migrates forward.
SCHEMA_VERSION = 1


def fingerprint(key: bytes, value: str) -> str:
    """HMAC-SHA256 of a secret value: equal values match, the value cannot be recovered."""
    return "hmac-sha256:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class AppliedRecord:
    """One instance as it was last applied."""

    environment: str
    kind: str
    name: str
    provider: str
    provider_id: str | None
    #: The body sent to the provider (secrets as `{"secretEnv": NAME}`).
    spec: dict[str, Any]
    spec_hash: str
    secret_fingerprints: dict[str, str | None]
    commit: str | None
    run_id: str
    applied_at: datetime

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(self.environment, self.kind, self.name)


@dataclass(frozen=True)
class AppliedSummary:
    """What plan needs to tell "unchanged" without reading whole specs."""

    provider: str
    spec_hash: str
    secret_fingerprints: dict[str, str | None]


@dataclass(frozen=True)
class ChangeRecord:
    """One change of a run, recorded the moment it finished."""

    key: InstanceKey
    action: Action
    outcome: ChangeOutcome
    error: str | None
    provider_id: str | None
    before_hash: str | None
    after_hash: str | None
    at: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, InstanceKey):  # callers may pass a plain tuple
            object.__setattr__(self, "key", InstanceKey(*self.key))


@dataclass
class RunRecord:
    """One apply (or heal, or rollback) of one environment."""

    id: str
    environment: str
    commit: str | None
    trigger: Trigger
    started_at: datetime
    finished_at: datetime | None
    outcome: RunOutcome
    pull_request: int | None = None
    author: str | None = None
    approvers: list[str] = field(default_factory=list)
    reverted_commits: list[str] = field(default_factory=list)
    reverted_runs: list[str] = field(default_factory=list)
    changes: list[ChangeRecord] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LockInfo:
    """Who holds an environment's lock, for the message a second apply prints."""

    environment: str
    run_id: str
    user: str
    host: str
    pid: int
    acquired_at: datetime

    def describe(self) -> str:
        return (
            f"run {self.run_id} by {self.user}@{self.host} (pid {self.pid}) "
            f"since {self.acquired_at.isoformat(timespec='seconds')}"
        )


class StateStore(Protocol):
    """A state backend. Every write is atomic; `record_change` is one transaction."""

    url: str

    def serial(self, environment: str) -> int:
        """Bumped by every recorded change: a saved plan made at another serial is stale."""
        ...

    def serials(self) -> dict[str, int]: ...

    def environments(self) -> list[str]:
        """Environments that have anything applied or any run."""
        ...

    def applied(
        self, environment: str, keys: Collection[InstanceKey] | None = None
    ) -> dict[InstanceKey, AppliedRecord]:
        """Applied records (only `keys`, when given)."""
        ...

    def applied_index(self, environment: str) -> dict[InstanceKey, AppliedSummary]:
        """Every applied key with its hash: cheap, so plan reads specs only of changes."""
        ...

    def begin_run(self, run: RunRecord) -> None: ...

    def record_change(
        self,
        run_id: str,
        change: ChangeRecord,
        applied: AppliedRecord | None,
        removed: InstanceKey | None,
    ) -> None:
        """Append the change to the run and update the applied set, all or nothing."""
        ...

    def finish_run(
        self, run_id: str, outcome: str, details: dict[str, Any] | None = None
    ) -> None: ...

    def runs(self, environment: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Newest first."""
        ...

    def run(self, run_id: str) -> RunRecord | None: ...

    def runs_for_commit(self, commit: str) -> list[RunRecord]: ...

    def lock(
        self, environment: str, run_id: str, *, break_lock: bool = False
    ) -> AbstractContextManager[LockInfo]:
        """Hold the environment for one run; raises LockedError naming the holder."""
        ...

    def lock_holder(self, environment: str) -> LockInfo | None: ...

    def fingerprint_key(self, *, create: bool = True) -> bytes | None:
        """The key for secret fingerprints; None when the state has none yet and
        `create` is False (read-only commands like plan must not write state)."""
        ...

    def close(self) -> None: ...
