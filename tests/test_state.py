"""State policy shared by every backend (`state/base.py`) and choosing a backend by URL.
The contract itself runs per backend in test_state_contract.py."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.errors import ConfigError, LockedError, StateMovedError
from reconciler.state import open_state
from reconciler.state.base import (
    FINGERPRINT_KEY_VAR,
    HeldLocks,
    LockInfo,
    check_takeover,
    fingerprint_key_from_env,
    is_stale,
    machine_identity,
    pid_alive,
    this_process,
)

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_state_urls(tmp_path: Path) -> None:
    s = open_state("sqlite:///sub/state.db", repo_root=tmp_path, env={})
    s.close()
    assert (tmp_path / "sub" / "state.db").exists()
    abs_db = tmp_path / "abs.db"
    open_state(f"sqlite:///{abs_db}", repo_root=Path("/nonexistent"), env={}).close()
    assert abs_db.exists()
    with pytest.raises(ConfigError, match="unknown state backend 'redis'"):
        open_state("redis://x", repo_root=tmp_path, env={})
    with pytest.raises(ConfigError, match="needs a path"):
        open_state("sqlite://", repo_root=tmp_path, env={})


def test_this_process_carries_machine_identity() -> None:
    me = this_process("dev", "r1")
    assert me.pid == os.getpid() and me.machine == machine_identity()
    assert pid_alive(os.getpid()) and not pid_alive(_dead_pid())


def test_stale_needs_same_host_same_machine_and_a_dead_pid() -> None:
    me = this_process("dev", "r2")
    dead = LockInfo("dev", "r1", "u", me.host, _dead_pid(), T0, me.machine)
    assert is_stale(dead, me)
    other_ns = LockInfo("dev", "r1", "u", me.host, dead.pid, T0, "boot:4026532179")
    other_host = LockInfo("dev", "r1", "u", "elsewhere", dead.pid, T0, me.machine)
    alive = LockInfo("dev", "r1", "u", me.host, os.getpid(), T0, me.machine)
    for holder in (other_ns, other_host, alive):
        assert not is_stale(holder, me)
        with pytest.raises(LockedError, match="--break-lock") as e:
            check_takeover(holder, me)
        assert e.value.exit_code == 4 and "locked by run r1" in e.value.message
        assert check_takeover(holder, me, break_lock=True)
    assert check_takeover(dead, me) and not check_takeover(None, me)


def test_held_locks_refuse_writes_once_the_lock_is_not_ours() -> None:
    held = HeldLocks()
    mine = this_process("dev", "r1")
    held.check("dev", None)  # not held by this store: nothing to check
    held.add(mine)
    held.check("dev", replace(mine))  # the same lock, as stored and read back
    theirs = this_process("dev", "r2")
    with pytest.raises(StateMovedError, match=r"run r1 was broken \(now held by run r2") as e:
        held.check("dev", theirs)
    assert e.value.exit_code == 4
    with pytest.raises(StateMovedError, match="it was released"):
        held.check("dev", None)
    retaken = replace(mine, acquired_at=T0)
    with pytest.raises(StateMovedError):
        held.check("dev", retaken)  # same run id, another acquisition
    held.discard(theirs)
    assert "dev" in held
    held.discard(mine)
    assert "dev" not in held


def test_fingerprint_key_from_the_injected_environment_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FINGERPRINT_KEY_VAR, "from-os-environ")
    assert fingerprint_key_from_env({}) is None
    assert fingerprint_key_from_env({FINGERPRINT_KEY_VAR: ""}) is None
    assert fingerprint_key_from_env({FINGERPRINT_KEY_VAR: "k"}) == b"k"
