"""Where the agent's commits come from: the deploy branch of `origin`, fetched into a
clone. The agent applies the fetched commit (git objects), never a working tree.

Two layouts. With `--clone DIR` the agent owns DIR: it clones `--remote` (or the
`origin` of `--repo`) there when DIR holds no repository yet, and after each fetch
checks the fetched commit out detached, so nothing but the agent moves it. Without
`--clone` the agent fetches into `--repo` itself and leaves its branches and working
tree alone (keep that working tree clean: apply refuses a commit that is HEAD with
uncommitted edits to the files it reads).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import git
from git.exc import GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from reconciler.errors import ConfigError, GitError
from reconciler.gate import DEPLOY_BRANCH_VAR
from reconciler.log import redact
from reconciler.redaction import Register
from reconciler.state.urls import passwords

#: Seconds one git network command may take before it is ended.
GIT_TIMEOUT_S = 300
_SYMREF = re.compile(r"^ref: refs/heads/(\S+)\s+HEAD$", re.MULTILINE)


def _git_env() -> dict[str, str]:
    """Never wait for a password on a terminal nobody watches."""
    return {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true"}


def _run(repo: git.Repo | None, *args: str, cwd: Path | None = None) -> str:
    runner = repo.git if repo is not None else git.Git(str(cwd) if cwd else None)
    try:
        out = runner.execute(
            ["git", *args],
            with_extended_output=False,
            kill_after_timeout=GIT_TIMEOUT_S,
            env={**os.environ, **_git_env()},
        )
    except GitCommandError as e:
        detail = (e.stderr or "").strip().removeprefix("stderr: ").strip("'\n ")
        raise GitError(redact(f"git {args[0]} failed: {detail or e.status}")) from None
    return str(out)


class DeployBranch:
    """The deploy branch of `origin` as this agent last fetched it."""

    def __init__(
        self,
        root: Path,
        *,
        env: Mapping[str, str],
        own_clone: bool,
        register: Register,
        remote: str | None = None,
        branch: str | None = None,
    ) -> None:
        self.root = root.resolve()
        #: Learns the passwords in the remote's URLs: the session's redactor.
        self._register = register
        self.own_clone = own_clone
        self.remote = remote
        self._branch = branch or env.get(DEPLOY_BRANCH_VAR) or None
        if remote:
            register(passwords(remote))

    # -- setting up ------------------------------------------------------------------

    def prepare(self) -> None:
        """Make sure `root` is a clone with an `origin` (cloning it when it is the agent's
        own directory and still empty)."""
        repo = self._open()
        if repo is None:
            if not self.own_clone or not self.remote:
                raise ConfigError(
                    f"{self.root} is not a git repository: give the agent a clone with an "
                    "`origin`, or --clone DIR --remote URL to make one"
                )
            if self.root.exists() and any(self.root.iterdir()):
                raise ConfigError(f"--clone {self.root} is neither empty nor a git repository")
            self.root.parent.mkdir(parents=True, exist_ok=True)
            _run(None, "clone", "--quiet", "--no-tags", self.remote, str(self.root))
            repo = self._open()
            assert repo is not None
        if "origin" not in [r.name for r in repo.remotes]:
            raise ConfigError(f"{self.root} has no remote named origin to fetch from")
        urls = list(repo.remote("origin").urls)
        self._register(p for u in urls for p in passwords(u))

    def _open(self) -> git.Repo | None:
        try:
            return git.Repo(self.root)
        except (InvalidGitRepositoryError, NoSuchPathError):
            return None

    @property
    def repo(self) -> git.Repo:
        repo = self._open()
        if repo is None:
            raise GitError(f"{self.root} is not a git repository")
        return repo

    # -- each interval -----------------------------------------------------------------

    @property
    def branch(self) -> str:
        """RECONCILER_DEPLOY_BRANCH, else the remote's default branch (asked once)."""
        if self._branch is None:
            self._branch = self._local_default()
        if self._branch is None:
            out = _run(self.repo, "ls-remote", "--symref", "origin", "HEAD")
            found = _SYMREF.search(out)
            if found is None:
                raise GitError(
                    "origin names no default branch: set RECONCILER_DEPLOY_BRANCH to the "
                    "branch the agent deploys"
                )
            self._branch = found.group(1)
        return self._branch

    def _local_default(self) -> str | None:
        """origin's default branch as `git clone` recorded it (no network)."""
        try:
            ref = self.repo.git.symbolic_ref("--quiet", "refs/remotes/origin/HEAD")
        except GitCommandError:
            return None
        return str(ref).removeprefix("refs/remotes/origin/") or None

    @property
    def tracking_ref(self) -> str:
        return f"refs/remotes/origin/{self.branch}"

    def fetch(self) -> str:
        """Fetch the deploy branch from origin; the commit it points at now."""
        repo = self.repo
        branch = self.branch
        _run(
            repo,
            "fetch",
            "--quiet",
            "--no-tags",
            "origin",
            f"+refs/heads/{branch}:{self.tracking_ref}",
        )
        sha = _run(repo, "rev-parse", "--verify", f"{self.tracking_ref}^{{commit}}").strip()
        if self.own_clone and _head(repo) != sha:
            _run(repo, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--force",
                 "--detach", sha)  # fmt: skip
        return sha


def _head(repo: git.Repo) -> str | None:
    try:
        return str(repo.head.commit.hexsha)
    except ValueError:
        return None
