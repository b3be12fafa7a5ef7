"""What a state backend implements: reads, one atomic transaction, and locks. Storage
only, as Terraform's `states/remote.Client`: the read-only guard, the held-lock check,
serials, the runs' lifecycle, the fingerprint key and imports live once, in the
`Store` (store.py) over it. SQLite, PostgreSQL and git implement `Backend`;
`state/testing.py` runs the backend suite (a transaction is atomic, a lock excludes
others) and the store's semantics over each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from reconciler.instances import InstanceKey
from reconciler.state.base import (
    AppliedRecord,
    AppliedSummary,
    ChangeRecord,
    EnvironmentState,
    LockInfo,
    RunRecord,
)
from reconciler.vocabulary import RunOutcome, Trigger

T = TypeVar("T")


class MissingRun(Exception):
    """A transaction named a run the state does not have; the store says so to the user."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


class LockLost(Exception):
    """Raised by `Backend.check_lock` when the storage itself knows the lock is gone,
    whatever its record says (PostgreSQL: the session holding it ended)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class Write:
    """What a transaction is for."""

    #: For errors: "cannot {what} in state ...".
    what: str
    #: One line describing the write, for a backend that keeps a log (git commits).
    message: str
    #: The transaction checks for itself that it still may (the lock it holds, what is
    #: already recorded): an optimistic backend that lost a race may run it again on
    #: the newer state. Otherwise it raises StateMovedError when anything the
    #: transaction depends on changed meanwhile.
    rechecks: bool = False


@dataclass(frozen=True)
class RunQuery:
    """Which runs, newest first (by `started_at`, then by the order they were recorded)."""

    environment: str | None = None
    run_id: str | None = None
    commit: str | None = None
    outcome: RunOutcome | None = None
    #: Runs of this trigger are left out.
    skip_trigger: Trigger | None = None
    limit: int | None = None
    #: With each run's changes (else headers only).
    changes: bool = True


class Tx(Protocol):
    """One transaction: everything written in it is kept together or not at all."""

    def lock_row(self, environment: str) -> LockInfo | None:
        """The environment's lock as recorded now (held until the transaction ends where
        the storage can: a takeover waits for it)."""
        ...

    def knows(self, environment: str) -> bool:
        """Whether anything besides a lock is recorded for `environment`."""
        ...

    def run(self, run_id: str) -> RunRecord | None:
        """A run without its changes."""
        ...

    def add_run(self, run: RunRecord) -> None:
        """Records a new run (its header: `run.changes` are not written); StateError
        when the id is taken."""
        ...

    def append_change(self, run_id: str, change: ChangeRecord, at: datetime) -> None:
        """Appends a change after the run's last one (numbered next), recorded `at`.
        MissingRun, now or when the transaction ends, when there is no such run."""
        ...

    def end_run(
        self,
        run_id: str,
        outcome: RunOutcome,
        finished_at: datetime,
        details: dict[str, Any] | None,
    ) -> None:
        """Sets the run's outcome and end (and details, unless None); MissingRun."""
        ...

    def put_applied(self, record: AppliedRecord) -> None: ...

    def delete_applied(self, key: InstanceKey) -> None: ...

    def bump_serial(self, environment: str) -> None:
        """The environment's serial plus one (a missing serial is 0)."""
        ...

    def put_environment(self, state: EnvironmentState) -> None:
        """Writes an environment as given: its runs with their changes (numbered from
        1, each with its `at`), its applied records and its serial."""
        ...

    def key(self) -> bytes | None:
        """The state's own fingerprint key."""
        ...

    def put_key(self, key: bytes, *, replace: bool) -> bytes:
        """Stores `key` as the state's own (unless it has one and not `replace`);
        returns the key stored."""
        ...

    def any_applied(self) -> bool:
        """Whether any environment has an applied record."""
        ...


class Backend(Protocol):
    """Storage of one state. `url` is as it may be shown (no password)."""

    url: str

    def serial(self, environment: str) -> int: ...

    def serials(self) -> dict[str, int]: ...

    def environments(self) -> list[str]: ...

    def applied(
        self, environment: str, keys: Sequence[InstanceKey] | None
    ) -> dict[InstanceKey, AppliedRecord]:
        """Sorted by key. `keys` (when given) are distinct, of `environment`, not empty."""
        ...

    def applied_index(self, environment: str) -> dict[InstanceKey, AppliedSummary]: ...

    def runs(self, query: RunQuery) -> list[RunRecord]: ...

    def holder(self, environment: str) -> LockInfo | None: ...

    def stored_key(self) -> bytes | None:
        """The state's own fingerprint key, read outside any transaction."""
        ...

    def transact(self, write: Write, fn: Callable[[Tx], T]) -> T:
        """Runs `fn` in one transaction and commits it; nothing of it stays when it raises.
        `fn` has no effect besides its Tx calls: an optimistic backend may run it again
        (see `Write.rechecks`)."""
        ...

    def lock(
        self, me: LockInfo, *, break_lock: bool, taken_over: Callable[[Tx, LockInfo], None]
    ) -> None:
        """Records `me` as its environment's holder. A holder found in the way is replaced
        when `base.check_takeover` allows it (or, where the storage knows, when its
        session is gone), with `taken_over(tx, holder)` in the same transaction; else
        LockedError naming it."""
        ...

    def unlock(self, me: LockInfo) -> None:
        """Removes the lock if it is still `me`'s."""
        ...

    def check_lock(self, me: LockInfo) -> LockInfo | None:
        """At most one round trip: the environment's lock as recorded now (for
        `HeldLocks.check`), or LockLost."""
        ...

    def close(self) -> None: ...
