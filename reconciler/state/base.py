"""What the state records, the StateStore protocol callers use, and the lock policy.

State answers "what did we apply, where, from which commit, in which run". Specs are
stored as applied, with secrets as references only; a keyed fingerprint of each
secret's value lets the plan notice a rotated secret without ever storing it.

Lock policy lives here once, so backends cannot drift apart: who a holder is
(`LockInfo`, with the machine identity), when a holder is gone (`is_stale`), when a lock
may be taken (`check_takeover`), and that every write of a run happens under the lock it
took (`HeldLocks.check`). The one StateStore is `store.Store`; backends only store.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from reconciler.errors import LockedError, ReconcilerError, StateError, StateMovedError
from reconciler.instances import InstanceKey
from reconciler.vocabulary import Action, ChangeOutcome, RunOutcome, Trigger

#: Keeps the fingerprint key out of the state (read from the injected environment).
FINGERPRINT_KEY_VAR = "RECONCILER_FINGERPRINT_KEY"


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
    #: `spec` as canonical JSON when the caller has it already (saves encoding it again).
    spec_json: str | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(self.environment, self.kind, self.name)


@dataclass(frozen=True)
class AppliedSummary:
    """What plan needs to tell "unchanged" without reading whole specs."""

    provider: str
    spec_hash: str
    secret_fingerprints: dict[str, str | None]


def index_from_rows(
    environment: str, rows: Iterable[Sequence[Any]]
) -> dict[InstanceKey, AppliedSummary]:
    """`applied_index` from (kind, name, provider, spec_hash, fingerprints JSON) rows.
    Most rows share one set of secret fingerprints: each distinct text is decoded once."""
    decoded: dict[str, dict[str, str | None]] = {}
    out = {}
    for kind, name, prov, h, fps in rows:
        if fps not in decoded:
            decoded[fps] = json.loads(fps)
        out[InstanceKey(environment, kind, name)] = AppliedSummary(prov, h, dict(decoded[fps]))
    return out


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
    #: What changed, field by field, as the plan showed it (secrets as references):
    #: `[{"path", "before", "after"}]`. History shows it without the manifests.
    diff: list[dict[str, Any]] = field(default_factory=list, compare=False)

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
    #: The environment's policy the run was applied under (its Environment spec and the
    #: approval settings): the next run is judged by it (the policy of record).
    policy: dict[str, Any] | None = None


@dataclass
class EnvironmentState:
    """One environment's whole recorded state, as `reconciler state migrate` copies it
    from one backend to another."""

    environment: str
    serial: int
    applied: list[AppliedRecord]
    #: Oldest first, each with its changes.
    runs: list[RunRecord]


@dataclass(frozen=True)
class LockInfo:
    """Who holds an environment's lock, for the message a second apply prints."""

    environment: str
    run_id: str
    user: str
    host: str
    pid: int
    acquired_at: datetime
    #: `machine_identity()` of the holder: a pid means something only inside it.
    machine: str = ""

    def describe(self) -> str:
        return (
            f"run {self.run_id} by {self.user}@{self.host} (pid {self.pid}) "
            f"since {self.acquired_at.isoformat(timespec='seconds')}"
        )

    def same_holder(self, other: LockInfo | None) -> bool:
        """The same acquisition (not merely the same run id): a broken and re-taken lock
        never passes for the original."""
        return other is not None and (
            self.environment, self.run_id, self.host, self.pid, self.machine, self.acquired_at
        ) == (
            other.environment, other.run_id, other.host, other.pid, other.machine,
            other.acquired_at,
        )  # fmt: skip


# -- lock policy -----------------------------------------------------------------------


def machine_identity() -> str:
    """Boot id and pid namespace: a pid is only comparable inside the same one. Containers
    sharing a hostname (and a volume) would otherwise take over each other's live locks.
    Empty where /proc has neither (then the hostname alone has to do)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def pid_alive(pid: int) -> bool:
    """Whether `pid` exists in this process's pid namespace."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except (OverflowError, ValueError):  # not a pid at all
        return False
    return True


def this_process(environment: str, run_id: str, at: datetime | None = None) -> LockInfo:
    """The lock this process would hold for `run_id`."""
    return LockInfo(
        environment=environment,
        run_id=run_id,
        user=current_user(),
        host=socket.gethostname(),
        pid=os.getpid(),
        acquired_at=at or datetime.now(UTC),
        machine=machine_identity(),
    )


def is_stale(holder: LockInfo, me: LockInfo) -> bool:
    """A holder is known gone only when it ran where `me` runs (same host and same
    machine identity) and its pid is dead. Anything else may be alive: fail closed."""
    return holder.host == me.host and holder.machine == me.machine and not pid_alive(holder.pid)


def check_takeover(holder: LockInfo | None, me: LockInfo, *, break_lock: bool = False) -> bool:
    """Whether `me` may take the lock from `holder` (True: the holder's run must be marked
    `interrupted`); raises LockedError naming a holder that may still be alive."""
    if holder is None:
        return False
    if break_lock or is_stale(holder, me):
        return True
    raise LockedError(
        f"environment {holder.environment!r} is locked by {holder.describe()}; if that run "
        "is gone (crashed on another machine or in another container), re-run with --break-lock"
    )


class HeldLocks:
    """The locks one store holds. Every write of a run checks, in the write's own
    transaction, that the environment's recorded lock is still the one taken: after a
    `--break-lock` the old holder stops at its next write instead of recording on."""

    def __init__(self) -> None:
        self._held: dict[str, LockInfo] = {}
        self._mu = threading.Lock()

    def add(self, info: LockInfo) -> None:
        with self._mu:
            self._held[info.environment] = info

    def discard(self, info: LockInfo) -> None:
        with self._mu:
            if info.same_holder(self._held.get(info.environment)):
                del self._held[info.environment]

    def get(self, environment: str) -> LockInfo | None:
        with self._mu:
            return self._held.get(environment)

    def __contains__(self, environment: object) -> bool:
        with self._mu:
            return environment in self._held

    def check(self, environment: str, recorded: LockInfo | None) -> None:
        """Raise StateMovedError (exit 4) unless this store does not hold `environment`,
        or `recorded` (the lock as stored right now) is still its own."""
        mine = self.get(environment)
        if mine is None or mine.same_holder(recorded):
            return
        now = "it was released" if recorded is None else f"now held by {recorded.describe()}"
        raise StateMovedError(
            f"state moved: the lock of {environment!r} held by run {mine.run_id} was broken "
            f"({now}); re-plan and apply again"
        )


@contextmanager
def holding(
    held: HeldLocks, me: LockInfo, release: Callable[[LockInfo], None]
) -> Iterator[LockInfo]:
    """The body of every backend's `lock()` once the lock is stored: writes are checked
    against `me` until the block ends, then `release` removes the lock if still `me`'s.
    When the block fails, its error matters more than a failed release (a lock left
    behind goes stale by itself)."""
    held.add(me)
    try:
        yield me
    except BaseException:
        held.discard(me)
        with suppress(ReconcilerError):
            release(me)
        raise
    held.discard(me)
    release(me)


# -- fingerprint key and read-only -----------------------------------------------------


def fingerprint_key_from_env(env: Mapping[str, str]) -> bytes | None:
    """RECONCILER_FINGERPRINT_KEY from the injected environment (never `os.environ`:
    the caller decides which environment a command runs with)."""
    value = env.get(FINGERPRINT_KEY_VAR)
    return value.encode() if value else None


def already_has_state(url: str, environment: str) -> StateError:
    """What `import_environment` says when the target already knows the environment."""
    return StateError(
        f"state {url} already has state for environment {environment!r}: "
        "refusing to merge two histories"
    )


def other_key_error(url: str) -> StateError:
    """What `import_fingerprint_key` says when the target's own key is in use."""
    return StateError(
        f"state {url} has another fingerprint key, and applied records fingerprinted with "
        f"it: the copied fingerprints would not match them (set {FINGERPRINT_KEY_VAR} to "
        "share one key instead)"
    )


def read_only_error(url: str, what: str) -> StateError:
    """What a read-only store says when asked to write."""
    return StateError(
        f"state {url} is open read-only: cannot {what} (only apply and heal write state)"
    )


class StateStore(Protocol):
    """Recorded state, as callers use it (`store.Store` over a backend). Every write is
    atomic; `record_change` is one transaction.

    Opened with `read_only`, a store never creates, migrates or writes anything; its
    writes (and `fingerprint_key(create=True)`, `lock`) raise StateError. Writes of a run
    whose environment this store locked raise StateMovedError once the lock was broken
    (`HeldLocks.check`). `reconciler.state.testing` is the contract, run per backend."""

    url: str
    read_only: bool

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
        self, run_id: str, outcome: RunOutcome, details: dict[str, Any] | None = None
    ) -> None: ...

    def runs(self, environment: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Newest first."""
        ...

    def run(self, run_id: str) -> RunRecord | None: ...

    def runs_for_commit(self, commit: str) -> list[RunRecord]: ...

    def last_applied_run(self, environment: str) -> RunRecord | None:
        """The newest run of `environment` whose outcome is `applied` and that applied a
        commit (`heal` runs only put recorded specs back, so they are skipped), without
        its changes: its commit is where the environment's state was whole, its policy
        the policy of record."""
        ...

    def lock(
        self, environment: str, run_id: str, *, break_lock: bool = False
    ) -> AbstractContextManager[LockInfo]:
        """Hold the environment for one run; raises LockedError naming the holder. A stale
        holder (`is_stale`) or, with `break_lock`, any holder is taken over and its run
        marked `interrupted`."""
        ...

    def lock_holder(self, environment: str) -> LockInfo | None: ...

    def check_lock(self, environment: str) -> None:
        """Before each provider write of a run: raise StateMovedError (exit 4) when the
        lock this store took for `environment` is no longer its own (broken by another
        run's --break-lock, or, with PostgreSQL, its session lost), so the run stops
        before calling a provider again instead of at its next write. Cheap: at most one
        round trip. Nothing to check (passes) when this store does not hold the lock."""
        ...

    def fingerprint_key(self, *, create: bool = True) -> bytes | None:
        """The key for secret fingerprints: RECONCILER_FINGERPRINT_KEY from the injected
        environment when set, else the state's own; None when the state has none yet and
        `create` is False (read-only commands like plan must not write state)."""
        ...

    def import_environment(self, state: EnvironmentState) -> None:
        """Write an environment's whole state at once, as another backend recorded it (its
        serial, applied records, runs with their changes): all or nothing, and StateError
        (`already_has_state`) when this state has any of the environment already."""
        ...

    def import_fingerprint_key(self, key: bytes) -> None:
        """Make `key` the state's own fingerprint key, replacing one that nothing was
        fingerprinted with yet; StateError (`other_key_error`) when the state has another
        key and applied records (their fingerprints were made with it)."""
        ...

    def close(self) -> None: ...
