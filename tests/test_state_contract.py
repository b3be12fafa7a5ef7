"""The state contract, once per backend: the store's semantics (`testing.CHECKS`) against
the one Store over SQLite, git and PostgreSQL, and the backend suite
(`testing.BACKEND_CHECKS`: transactions are atomic, a lock excludes others)."""

from __future__ import annotations

import subprocess
from functools import partial
from pathlib import Path

import pytest
from conftest import commit_all, git, init_repo, write_files

from reconciler.state import open_backend, open_state, testing

BACKENDS = ["sqlite", "git", "postgresql"]


@pytest.fixture(params=BACKENDS)
def state(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """A state URL and the manifests repo it is relative to, empty."""
    if request.param == "sqlite":
        return "sqlite:///.reconciler/state.db", tmp_path
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url")), tmp_path
    # git: a manifests repo with one commit and a bare `origin`: every write is pushed
    url = "git://refs/reconciler/state"
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], check=True)
    root = init_repo(tmp_path / "work")
    write_files(root, {"reconciler.yaml": f"state: {url}\n"})
    commit_all(root, "init")
    git(root, "remote", "add", "origin", str(tmp_path / "origin.git"))
    return url, root


@pytest.mark.parametrize("check", testing.CHECKS, ids=testing.check_name)
def test_store(check: testing.Check, state: tuple[str, Path]) -> None:
    url, root = state
    check(partial(open_state, url, repo_root=root))


@pytest.mark.parametrize("check", testing.BACKEND_CHECKS, ids=testing.check_name)
def test_backend(check: testing.BackendCheck, state: tuple[str, Path]) -> None:
    url, root = state
    check(partial(open_backend, url, repo_root=root))
