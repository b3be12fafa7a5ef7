"""Copying recorded state to another backend with its history (`reconciler state migrate`).

Every environment of the source is copied whole: its serial (so a plan saved against the
source stays valid against the target), its applied records, and every run with its
changes, policy and diffs. The fingerprint key is copied too unless it comes from the
environment (RECONCILER_FINGERPRINT_KEY), so the next plan sees no secret as rotated.

The copy holds the lock of each environment in the source and in the target for its
whole duration: it never copies while a run holds a lock in the source (exit 4 names
that run), and no apply can start against either side halfway. It refuses, before
copying anything, when the target already has state for any of the environments: two
histories are never merged.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal

from reconciler.errors import LockedError, StateError
from reconciler.state.base import EnvironmentState, StateStore, fingerprint_key_from_env

KeyOutcome = Literal["copied", "from-environment", "none"]


@dataclass(frozen=True)
class MigratedEnvironment:
    environment: str
    serial: int
    applied: int
    runs: int
    changes: int


@dataclass(frozen=True)
class MigrationReport:
    """What was copied; the URLs as they may be shown (passwords masked)."""

    source: str
    target: str
    environments: list[MigratedEnvironment]
    fingerprint_key: KeyOutcome
    #: Executions copied with the state (reconciler/runs/store.py).
    executions: int = 0


def export_environment(store: StateStore, environment: str) -> EnvironmentState:
    """An environment's whole state, read through the StateStore protocol."""
    return EnvironmentState(
        environment=environment,
        serial=store.serial(environment),
        applied=list(store.applied(environment).values()),
        runs=store.runs(environment)[::-1],
    )


def migrate(source: StateStore, target: StateStore, *, env: Mapping[str, str]) -> MigrationReport:
    """Copy every environment of `source` into `target` (see the module docstring). `env`
    is the command's environment, where a fingerprint key may come from."""
    names = sorted(set(source.environments()) | set(source.serials()))
    _refuse_known(target, names)
    copied: list[MigratedEnvironment] = []
    with _locked(source, target, names):
        _refuse_known(target, names)  # an apply may have written before the locks
        key = _copy_key(source, target, env)
        for name in names:
            state = export_environment(source, name)
            try:
                target.import_environment(state)
            except StateError as e:
                done = ", ".join(m.environment for m in copied) or "none"
                raise type(e)(f"{e.message} (environments copied before: {done})") from None
            copied.append(_summary(state))
    return MigrationReport(source.url, target.url, copied, key)


def _summary(state: EnvironmentState) -> MigratedEnvironment:
    changes = sum(len(r.changes) for r in state.runs)
    return MigratedEnvironment(
        state.environment, state.serial, len(state.applied), len(state.runs), changes
    )


def _refuse_known(target: StateStore, names: list[str]) -> None:
    serials = target.serials()
    known = set(target.environments())
    taken = [n for n in names if n in known or serials.get(n)]
    if taken:
        raise StateError(
            f"state {target.url} already has state for "
            + ", ".join(repr(n) for n in taken)
            + ": refusing to merge two histories; nothing was copied"
        )


@contextmanager
def _locked(source: StateStore, target: StateStore, names: list[str]) -> Iterator[None]:
    """Every environment's lock, in the source and in the target, for the whole copy."""
    run_id = f"migrate-{uuid.uuid4().hex[:12]}"
    with ExitStack() as stack:
        for store in (source, target):
            for name in names:
                try:
                    stack.enter_context(store.lock(name, run_id))
                except LockedError:
                    holder = store.lock_holder(name)
                    who = holder.describe() if holder else "another session"
                    raise LockedError(
                        f"environment {name!r} is locked in {store.url} by {who}: "
                        "migrate when no run holds it; nothing was copied"
                    ) from None
        yield


def _copy_key(source: StateStore, target: StateStore, env: Mapping[str, str]) -> KeyOutcome:
    if fingerprint_key_from_env(env) is not None:
        return "from-environment"
    key = source.fingerprint_key(create=False)
    if key is None:
        return "none"
    target.import_fingerprint_key(key)
    return "copied"
