"""Executions in every state backend keep one contract (reconciler/runs/testing.py)."""

from __future__ import annotations

import subprocess
from functools import partial
from pathlib import Path

import pytest
from conftest import init_repo

from reconciler.runs import testing
from reconciler.runs.store import ExecutionStore, open_executions


def _sqlite(tmp_path: Path, *, read_only: bool = False) -> ExecutionStore:
    return open_executions("sqlite:///state.db", repo_root=tmp_path, env={}, read_only=read_only)


@pytest.mark.parametrize("check", testing.CHECKS, ids=testing.check_name)
def test_sqlite(check: testing.Check, tmp_path: Path) -> None:
    check(partial(_sqlite, tmp_path))


@pytest.mark.parametrize("check", testing.CHECKS, ids=testing.check_name)
def test_git(check: testing.Check, tmp_path: Path) -> None:
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    repo = init_repo(tmp_path / "repo")
    subprocess.run(["git", "-C", str(repo), "remote", "add", "origin", str(bare)], check=True)
    check(partial(open_executions, "git://refs/reconciler/state", repo_root=repo, env={}))


@pytest.mark.parametrize("check", testing.CHECKS, ids=testing.check_name)
def test_postgres(check: testing.Check, tmp_path: Path, postgres_url: str) -> None:
    check(partial(open_executions, postgres_url, repo_root=tmp_path, env={}))


def test_a_missing_sqlite_state_reads_as_no_executions(tmp_path: Path) -> None:
    store = _sqlite(tmp_path, read_only=True)
    assert store.find(testing.Query()) == []
    assert not (tmp_path / "state.db").exists()
