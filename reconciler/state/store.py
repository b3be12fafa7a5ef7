"""The one `StateStore`: every semantic of recorded state, once, over a `Backend`.

Here and nowhere else: a read-only store refuses writes; every write of a run checks,
inside its own transaction, that the lock this store took for the environment is still
its own (`HeldLocks.check`); a recorded change that touches the applied set bumps the
environment's serial; a run's changes are appended in order, each with its time; a
taken-over holder's run ends `interrupted`; the fingerprint key comes from the injected
environment first and is otherwise made once per state; an imported environment never
merges into one that has state. Backends (sqlite.py, postgres.py, git/) only store.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from reconciler.errors import StateError, StateMovedError
from reconciler.instances import InstanceKey
from reconciler.state.backend import Backend, LockLost, MissingRun, RunQuery, Tx, Write
from reconciler.state.base import (
    AppliedRecord,
    AppliedSummary,
    ChangeRecord,
    EnvironmentState,
    HeldLocks,
    LockInfo,
    RunRecord,
    already_has_state,
    fingerprint_key_from_env,
    holding,
    other_key_error,
    read_only_error,
    this_process,
)
from reconciler.vocabulary import RunOutcome


class Store:
    """A StateStore over `backend`. `env` is the command's environment (where
    RECONCILER_FINGERPRINT_KEY is read); `read_only` stores never write."""

    def __init__(
        self, backend: Backend, *, env: Mapping[str, str], read_only: bool = False
    ) -> None:
        self.backend = backend
        self.url = backend.url
        self.read_only = read_only
        self._env = dict(env)
        self._held = HeldLocks()

    # -- guards ----------------------------------------------------------------------

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise read_only_error(self.url, what)

    def _check_held(self, tx: Tx, environment: str) -> None:
        """Inside the write's transaction: a run holding the lock writes only while the
        recorded lock is still its own."""
        if environment in self._held:
            self._held.check(environment, tx.lock_row(environment))

    def _no_run(self, run_id: str) -> StateError:
        return StateError(f"state {self.url}: no run {run_id} (begin_run first)")

    # -- reads -----------------------------------------------------------------------

    def serial(self, environment: str) -> int:
        return self.backend.serial(environment)

    def serials(self) -> dict[str, int]:
        return self.backend.serials()

    def environments(self) -> list[str]:
        return self.backend.environments()

    def applied(
        self, environment: str, keys: Collection[InstanceKey] | None = None
    ) -> dict[InstanceKey, AppliedRecord]:
        if keys is None:
            return self.backend.applied(environment, None)
        wanted = [k for k in dict.fromkeys(map(InstanceKey._make, keys)) if k[0] == environment]
        return self.backend.applied(environment, wanted) if wanted else {}

    def applied_index(self, environment: str) -> dict[InstanceKey, AppliedSummary]:
        return self.backend.applied_index(environment)

    def runs(self, environment: str | None = None, limit: int | None = None) -> list[RunRecord]:
        limit = None if limit is None else max(int(limit), 0)
        return self.backend.runs(RunQuery(environment=environment, limit=limit))

    def run(self, run_id: str) -> RunRecord | None:
        found = self.backend.runs(RunQuery(run_id=run_id))
        return found[0] if found else None

    def runs_for_commit(self, commit: str) -> list[RunRecord]:
        return self.backend.runs(RunQuery(commit=commit))

    def last_applied_run(self, environment: str) -> RunRecord | None:
        """`heal` runs put recorded specs back: never the commit the state was whole at."""
        query = RunQuery(
            environment=environment, outcome="applied", skip_trigger="heal", limit=1,
            changes=False,
        )  # fmt: skip
        found = self.backend.runs(query)
        return found[0] if found else None

    def lock_holder(self, environment: str) -> LockInfo | None:
        return self.backend.holder(environment)

    # -- runs ------------------------------------------------------------------------

    def begin_run(self, run: RunRecord) -> None:
        env = run.environment
        what = f"begin run {run.id}"
        self._writable(what)

        def begin(tx: Tx) -> None:
            self._check_held(tx, env)
            tx.add_run(run)

        message = f"begin {run.trigger} run {run.id} in {env}"
        self.backend.transact(Write(what, message, rechecks=env in self._held), begin)

    def record_change(
        self,
        run_id: str,
        change: ChangeRecord,
        applied: AppliedRecord | None,
        removed: InstanceKey | None,
    ) -> None:
        """The checks come last: a backend may send the writes and the lock read in one
        round trip (they commit or roll back together all the same)."""
        env = change.key.environment
        what = f"record a change of run {run_id}"
        self._writable(what)
        at = change.at or datetime.now(UTC)
        gone = None if removed is None else InstanceKey._make(removed)

        def record(tx: Tx) -> None:
            tx.append_change(run_id, change, at)
            if gone is not None:
                tx.delete_applied(gone)
            if applied is not None:
                tx.put_applied(applied)
            if applied is not None or gone is not None:
                tx.bump_serial(env)
            self._check_held(tx, env)

        key = change.key
        message = f"{change.action} {key.kind}/{key.name} in {env}: {change.outcome} (run {run_id})"
        try:
            self.backend.transact(Write(what, message, rechecks=env in self._held), record)
        except MissingRun:
            raise self._no_run(run_id) from None

    def finish_run(
        self, run_id: str, outcome: RunOutcome, details: dict[str, Any] | None = None
    ) -> None:
        what = f"finish run {run_id}"
        self._writable(what)
        found = self.backend.runs(RunQuery(run_id=run_id, changes=False))
        if not found:
            raise self._no_run(run_id)
        env = found[0].environment
        finished = datetime.now(UTC)

        def finish(tx: Tx) -> None:
            self._check_held(tx, env)
            tx.end_run(run_id, outcome, finished, details)

        message = f"finish run {run_id} in {env}: {outcome}"
        try:
            self.backend.transact(Write(what, message, rechecks=env in self._held), finish)
        except MissingRun:
            raise self._no_run(run_id) from None

    # -- locks -----------------------------------------------------------------------

    @contextmanager
    def lock(
        self, environment: str, run_id: str, *, break_lock: bool = False
    ) -> Iterator[LockInfo]:
        self._writable(f"lock {environment!r}")
        me = this_process(environment, run_id)

        def taken_over(tx: Tx, holder: LockInfo) -> None:
            """The holder's run, if it had not ended, ends `interrupted` as `me` starts."""
            run = tx.run(holder.run_id)
            if run is not None and run.outcome == "running":
                tx.end_run(holder.run_id, "interrupted", me.acquired_at, None)

        self.backend.lock(me, break_lock=break_lock, taken_over=taken_over)
        with holding(self._held, me, self.backend.unlock):
            yield me

    def check_lock(self, environment: str) -> None:
        mine = self._held.get(environment)
        if mine is None:
            return
        try:
            recorded = self.backend.check_lock(mine)
        except LockLost as e:
            raise StateMovedError(
                f"state moved: the lock of {environment!r} held by run {mine.run_id} was lost "
                f"({e.why}); re-plan and apply again"
            ) from None
        self._held.check(environment, recorded)

    # -- keys and imports ------------------------------------------------------------

    def fingerprint_key(self, *, create: bool = True) -> bytes | None:
        """RECONCILER_FINGERPRINT_KEY of the injected environment when set (keeps the key
        out of the state), else a random key made once per state."""
        if create:
            self._writable("create the fingerprint key")
        env_key = fingerprint_key_from_env(self._env)
        if env_key:
            return env_key
        key = self.backend.stored_key()
        if key is not None or not create:
            return key
        new = secrets.token_bytes(32)
        write = Write("create the fingerprint key", "create fingerprint key", rechecks=True)
        return self.backend.transact(write, lambda tx: tx.put_key(new, replace=False))

    def import_environment(self, state: EnvironmentState) -> None:
        env = state.environment
        what = f"import environment {env!r}"
        self._writable(what)
        runs = [
            replace(run, changes=[replace(c, at=c.at or run.started_at) for c in run.changes])
            for run in state.runs
        ]
        copy = replace(state, runs=runs)  # every change with its time

        def put(tx: Tx) -> None:
            if tx.knows(env):
                raise already_has_state(self.url, env)
            tx.put_environment(copy)

        self.backend.transact(Write(what, f"import environment {env}", rechecks=True), put)

    def import_fingerprint_key(self, key: bytes) -> None:
        what = "import the fingerprint key"
        self._writable(what)

        def adopt(tx: Tx) -> None:
            if tx.key() not in (None, key) and tx.any_applied():
                raise other_key_error(self.url)
            tx.put_key(key, replace=True)

        self.backend.transact(Write(what, "import fingerprint key", rechecks=True), adopt)

    def close(self) -> None:
        self.backend.close()
