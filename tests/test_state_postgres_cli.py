"""Locks of the postgresql:// state through real `reconciler apply` processes with the
local provider: a holder killed with kill -9 is taken over without --break-lock, and of
two applies racing for one environment exactly one applies.

A holder is kept mid-run by holding the local provider's registry (a SQLite file) write
lock from the test: its next provider write waits for it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from conftest import commit_all, init_repo, run_cli, write_files
from pgserver import PgServer

from reconciler.state import open_state
from reconciler.state.base import LockInfo

HEAD = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: dev}
spec: {description: test}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: registry}
spec: {type: local, environments: [dev]}
"""
DEPLOYMENT = """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: svc-%(i)02d}
spec: {environments: [dev], provider: registry, model: gpt-4o-mini, endpoint: /svc-%(i)02d}
"""


def _deployments(repo: Path, count: int) -> None:
    write_files(repo, {f"manifests/svc-{i:02d}.yaml": DEPLOYMENT % {"i": i} for i in range(count)})
    commit_all(repo, f"{count} services")


def _repo(root: Path, url: str) -> Path:
    """Applied once (the registry exists), then grown by ten uncommitted-to-state services."""
    init_repo(root)
    write_files(root, {"manifests/head.yaml": HEAD, ".gitignore": ".reconciler/\n"})
    _deployments(root, 1)
    r = run_cli(["--repo", str(root), "--state", url, "apply"])
    assert r.code == 0, r.err
    _deployments(root, 11)
    return root


@contextmanager
def _registry_held(repo: Path) -> Iterator[None]:
    """The local provider's registry write-locked: applies wait at their next write."""
    with closing(sqlite3.connect(repo / ".reconciler" / "local-registry.db", 60)) as db:
        db.isolation_level = None
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            db.execute("ROLLBACK")


def _apply(repo: Path, url: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI"))}
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--repo", str(repo), "--state", url, "apply"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_running_holder(url: str, repo: Path) -> LockInfo:
    store = open_state(url, repo_root=repo, env={}, read_only=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            holder = store.lock_holder("dev")
            run = store.run(holder.run_id) if holder else None
            if holder is not None and run is not None and run.outcome == "running":
                return holder
            time.sleep(0.02)
        raise AssertionError("no apply took the lock and began its run within 60 s")
    finally:
        store.close()


def _objects(repo: Path) -> list[str]:
    with closing(sqlite3.connect(repo / ".reconciler" / "local-registry.db")) as db:
        return sorted(r[0] for r in db.execute("SELECT name FROM objects"))


def _history(repo: Path, url: str) -> list[dict[str, object]]:
    r = run_cli(["--repo", str(repo), "--state", url, "history", "--json"])
    assert r.code == 0, r.err
    return list(json.loads(r.out))


def test_a_holder_killed_mid_run_is_taken_over_without_break_lock(
    tmp_path: Path, postgres_url: str, postgres_server: PgServer
) -> None:
    repo = _repo(tmp_path / "repo", postgres_url)
    with _registry_held(repo):
        proc = _apply(repo, postgres_url)
        try:
            holder = _wait_for_running_holder(postgres_url, repo)
            assert holder.pid == proc.pid
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    r = run_cli(["--repo", str(repo), "--state", postgres_url, "apply"])
    assert r.code == 0, r.err
    assert "locked" not in r.err and postgres_server.password not in r.out + r.err
    runs = _history(repo, postgres_url)
    assert [(run["id"] == holder.run_id, run["outcome"]) for run in runs] == [
        (False, "applied"),
        (True, "interrupted"),
        (False, "applied"),
    ]
    assert _objects(repo) == [f"svc-{i:02d}" for i in range(11)], "each created once"
    check = open_state(postgres_url, repo_root=repo, env={}, read_only=True)
    assert check.lock_holder("dev") is None and check.serial("dev") == 11
    check.close()


def test_two_applies_racing_for_one_environment_exactly_one_applies(
    tmp_path: Path, postgres_url: str
) -> None:
    repo = _repo(tmp_path / "repo", postgres_url)
    with _registry_held(repo):  # the winner holds the lock until the loser is done
        procs = [_apply(repo, postgres_url), _apply(repo, postgres_url)]
        deadline = time.monotonic() + 60
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.02)
        loser = next((p for p in procs if p.poll() is not None), None)
        assert loser is not None, "neither apply was locked out"
        winner = procs[1 - procs.index(loser)]
        _, loser_err = loser.communicate(timeout=30)
        assert winner.poll() is None, "the winner finished while its provider was held"
    winner_out, winner_err = winner.communicate(timeout=120)
    assert (winner.returncode, loser.returncode) == (0, 4), winner_err + loser_err
    assert "environment 'dev' is locked by run" in loser_err
    assert f"pid {winner.pid})" in loser_err and "Traceback" not in loser_err
    assert "dev: applied" in winner_out
    assert _objects(repo) == [f"svc-{i:02d}" for i in range(11)], "each created once"
    assert [run["outcome"] for run in _history(repo, postgres_url)] == ["applied", "applied"]
