"""Shared test helpers: real git repos in temp dirs and the CLI run in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from pgserver import postgres_server, postgres_url  # noqa: F401 (PostgreSQL fixtures)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "manifests"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


def init_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "dev@example.com")
    git(path, "config", "user.name", "Dev")
    git(path, "config", "commit.gpgsign", "false")
    return path


def write_files(repo: Path, files: Mapping[str, str | bytes]) -> None:
    for rel, content in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def copy_example(dest: Path) -> Path:
    """A manifests repo holding a copy of the project's example manifests/."""
    import shutil

    init_repo(dest)
    shutil.copytree(EXAMPLE, dest / "manifests")
    (dest / ".gitignore").write_text(".reconciler/\n")
    commit_all(dest, "example manifests")
    return dest


def squash_to_root(repo: Path, message: str) -> str:
    """Commit the work tree as the repository's only commit: an environment with nothing
    recorded has every commit since its declaration judged, and tests that first apply a
    protected one review that single commit (see `FakeGitHub.adopt`)."""
    git(repo, "add", "-A")
    if git(repo, "status", "--porcelain"):
        git(repo, "commit", "-q", "-m", message)
    tree = git(repo, "write-tree")
    root = git(repo, "commit-tree", tree, "-m", message)
    git(repo, "reset", "-q", "--hard", root)
    return root


def pull_request_event(tmp_path: Path, number: int = 7, head: str = "f" * 40) -> dict[str, str]:
    """The environment of a GitHub Actions job run for pull request `number` (its event
    file written under `tmp_path`): what `ci.detect` reads."""
    event = tmp_path / f"event-{number}.json"
    event.write_text(json.dumps({"pull_request": {"number": number, "head": {"sha": head}}}))
    return {"GITHUB_ACTIONS": "true", "GITHUB_EVENT_PATH": str(event)}


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a command sees: this process's without the CI variables of a CI
    run of the tests (they would make a command think it runs in CI), plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI"))}
    full_env.update(env or {})
    return full_env


def run_cli(
    args: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    process: bool = False,
) -> Result:
    """Run the CLI (`reconciler.cli.main`) in this process, as a process would see it;
    `process=True` starts `python -m reconciler` instead, for what only a real process
    shows (its exit status, signals, start-up). A process costs ~0.35 s of imports
    before it does anything, and about 230 command lines are run by the tests."""
    if process or "LD_PRELOAD" in (env or {}):  # libfaketime: only a new process loads it
        return run_process(args, env=env, cwd=cwd, timeout=timeout)
    from inprocess import run_in_process

    return run_in_process(args, env=cli_environment(env), cwd=cwd)


def run_process(
    args: list[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> Result:
    """Run `python -m reconciler` as a real process (what users run)."""
    p = subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env=cli_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture
def example_repo(tmp_path: Path) -> Path:
    return copy_example(tmp_path / "repo")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `slow` tests first, each group in collection order: with `-n 2` the long
    tests then run while the other worker still has short ones to take, instead of one
    long test at the end keeping a worker busy while the other has nothing left."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
