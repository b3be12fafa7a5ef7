"""One git ref as a compare-and-swap store of files: fetch, read, commit, swap. No state
semantics (those live in `store.py`, the file layout in `layout.py`).

Commits are built with plumbing (hash-object, a private index file, write-tree,
commit-tree), so the user's working tree, index and HEAD are never touched. With an
`origin` remote every write is pushed with a lease (`--force-with-lease=REF:<sha>`);
without one the local ref is compare-and-swapped (`update-ref REF new old`). Writes are
optimistic: a lost race refetches and retries, but only if nothing the write depends on
(the paths it watches) changed meanwhile; otherwise `StateMovedError`.
"""

from __future__ import annotations

import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import git
from git.exc import GitCommandError

from reconciler.errors import ConfigError, StateError, StateMovedError
from reconciler.gitrepo import BOT_IDENTITY

#: How many times a write refetches after losing a compare-and-swap before giving up.
MAX_ATTEMPTS = 16
_REF = re.compile(r"refs/[A-Za-z0-9._/-]+")
_CREDENTIALS = re.compile(r"://[^/@\s]+@")
#: Never prompt for credentials (a CI job would hang).
_NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": ""}

#: path -> new content, or None to remove the file.
Changes = dict[str, bytes | None]


def parse_git_url(url: str) -> str:
    """The ref of a `git://refs/...` state URL; anything else is a ConfigError."""
    ref = url.removeprefix("git://")
    bad = (
        not _REF.fullmatch(ref)
        or ref.endswith(("/", ".lock", "."))
        or any(part in ("", ".", "..") or part.startswith(".") for part in ref.split("/"))
        or ".." in ref
    )
    if bad:
        raise ConfigError(
            f"state URL {url!r} needs a ref of the manifests repo, e.g. git://refs/reconciler/state"
        )
    return ref


@dataclass
class Snapshot:
    """The tree of one commit of the ref: path -> blob sha. Blobs are read lazily."""

    sha: str | None
    files: dict[str, str] = field(default_factory=dict)
    #: What upper layers derive from this (immutable) tree, computed once.
    derived: dict[str, Any] = field(default_factory=dict)


class RefStore:
    """`ref` of `repo`, mirrored from and pushed to `remote` when there is one."""

    def __init__(
        self,
        repo: git.Repo,
        ref: str,
        *,
        url: str,
        remote: str | None,
        validate: Callable[[RefStore, Snapshot], None],
    ) -> None:
        self.repo = repo
        self.ref = ref
        self.url = url
        self.remote = remote
        #: Guards everything below; upper layers hold it across read-modify-write too.
        self.mu = threading.RLock()
        #: The newest snapshot this store has seen (None until the first read).
        self.snap: Snapshot | None = None
        self._validate = validate
        self._tmp = Path(tempfile.mkdtemp(prefix="reconciler-state-"))
        self._index = self._tmp / "index"
        #: The commit the private index holds; "" when unknown (rebuild before use).
        self._index_base: str | None = ""
        self._blobs: dict[str, bytes] = {}
        #: What the remote's ref is believed to be (None: absent): the push lease.
        self._lease: str | None = None

    # -- git -------------------------------------------------------------------------

    def git(
        self, *args: str, env: Mapping[str, str] | None = None, check: bool = True
    ) -> tuple[int, str, str]:
        try:
            out = self.repo.git.execute(
                ["git", *args],
                with_extended_output=True,
                with_exceptions=False,
                env={**_NO_PROMPT, **(env or {})},
            )
        except (GitCommandError, OSError) as e:
            raise StateError(f"state {self.url}: cannot run git: {e}") from None
        status, stdout, stderr = out
        if check and status != 0:
            raise StateError(f"state {self.url}: git {args[0]} failed: {git_error(stderr)}")
        return status, stdout, stderr

    def local_ref(self) -> str | None:
        status, out, _ = self.git("rev-parse", "-q", "--verify", self.ref, check=False)
        return out.strip() if status == 0 else None

    def blob(self, sha: str) -> bytes:
        data = self._blobs.get(sha)
        if data is None:
            try:
                data = self.repo.git.get_object_data(sha)[3]
            except (GitCommandError, ValueError, OSError) as e:
                raise StateError(f"state {self.url}: cannot read object {sha}: {e}") from None
            self._blobs[sha] = data
        return data

    def read(self, snap: Snapshot, path: str) -> bytes | None:
        sha = snap.files.get(path)
        return None if sha is None else self.blob(sha)

    # -- loading ---------------------------------------------------------------------

    def load(self, sha: str | None) -> Snapshot:
        if self.snap is not None and self.snap.sha == sha:
            return self.snap
        snap = Snapshot(sha)
        if sha is not None:
            _, out, _ = self.git("ls-tree", "-r", "-z", "--full-tree", sha)
            for entry in filter(None, out.split("\0")):
                meta, path = entry.split("\t", 1)
                _mode, kind, blob = meta.split(" ")
                if kind == "blob":
                    snap.files[path] = blob
        self._validate(self, snap)
        self.snap = snap
        return snap

    def fetch(self) -> Snapshot:
        """The remote's ref (when there is a remote), else the local one."""
        if self.remote is not None:
            status, _, err = self.git(
                "fetch", "-q", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                self.remote, f"+{self.ref}:{self.ref}", check=False,
            )  # fmt: skip
            if status == 0:
                self._lease = self.local_ref()
                return self.load(self._lease)
            if "couldn't find remote ref" not in err:
                raise StateError(
                    f"state {self.url}: cannot fetch {self.ref} from {self.remote}: "
                    f"{git_error(err)}"
                )
            # Not published yet: build on any local history, expect the ref to be absent.
            self._lease = None
            return self.load(self.local_ref())
        local = self.local_ref()
        self._lease = local
        return self.load(local)

    def follow_local(self) -> Snapshot:
        """The remote once per store, then whatever the local ref says (other local
        processes update it after each push)."""
        if self.snap is None:
            return self.fetch()
        local = self.local_ref()
        if local != self.snap.sha and local is not None:
            self._lease = local
            return self.load(local)
        return self.snap

    # -- writing ---------------------------------------------------------------------

    def _hash(self, blobs: Mapping[str, bytes]) -> dict[str, str]:
        if not blobs:
            return {}
        names = []
        for i, data in enumerate(blobs.values()):
            name = str(self._tmp / f"blob{i}")
            Path(name).write_bytes(data)
            names.append(name)
        _, out, _ = self.git("hash-object", "-w", "--no-filters", "--", *names)
        shas = out.split()
        for sha, data in zip(shas, blobs.values(), strict=True):
            self._blobs[sha] = data
        return dict(zip(blobs, shas, strict=True))

    def _commit(self, snap: Snapshot, changes: Changes, message: str) -> Snapshot:
        """A commit of `snap` plus `changes`, built in the private index (not yet on the ref)."""
        blobs = self._hash({p: d for p, d in changes.items() if d is not None})
        env = {"GIT_INDEX_FILE": str(self._index)}
        if self._index_base != snap.sha:
            self._index_base = ""
            self.git("read-tree", *([snap.sha] if snap.sha else ["--empty"]), env=env)
        self._index_base = ""  # until the tree is written
        args = ["update-index", "--add"]
        for path, sha in blobs.items():
            args += ["--cacheinfo", f"100644,{sha},{path}"]
        removed = [p for p, d in changes.items() if d is None]
        if removed:
            args += ["--force-remove", "--", *removed]
        self.git(*args, env=env)
        _, tree, _ = self.git("write-tree", env=env)
        parent = ["-p", snap.sha] if snap.sha else []
        _, commit, _ = self.git(
            "commit-tree", "--no-gpg-sign", tree.strip(), *parent, "-m", message,
            env=BOT_IDENTITY,
        )  # fmt: skip
        commit = commit.strip()
        self._index_base = commit
        files = dict(snap.files)
        for path in removed:
            files.pop(path, None)
        files.update(blobs)
        return Snapshot(commit, files)

    def _swap(self, snap: Snapshot, commit: str) -> bool:
        """Compare-and-swap the ref from `snap` to `commit`. False when it moved; the store
        has then refetched the newest state."""
        if self.remote is None:
            status, _, err = self.git(
                "update-ref", "-m", "reconciler state", self.ref, commit, snap.sha or "",
                check=False,
            )  # fmt: skip
            if status == 0:
                return True
            if self.fetch().sha == snap.sha:
                raise StateError(f"state {self.url}: cannot update {self.ref}: {git_error(err)}")
            return False
        lease = self._lease
        status, _, err = self.git(
            "push", "-q", "--no-verify", "--recurse-submodules=no",
            f"--force-with-lease={self.ref}:{lease or ''}",
            self.remote, f"{commit}:{self.ref}", check=False,
        )  # fmt: skip
        if status != 0:
            self.fetch()
            if self._lease == lease:
                raise StateError(
                    f"state {self.url}: cannot push {self.ref} to {self.remote}: {git_error(err)}"
                )
            return False
        # Mirror locally; if another local process moved it meanwhile, theirs stays.
        self.git(
            "update-ref", "-m", "reconciler state", self.ref, commit, snap.sha or "", check=False
        )
        return True

    def write(
        self,
        message: str,
        mutate: Callable[[Snapshot], Changes],
        *,
        watch: Sequence[str] = (),
        reevaluate: bool = False,
        fresh: bool = False,
        seed: Callable[[Snapshot], Changes] | None = None,
        describe_move: Callable[[Snapshot, Sequence[str]], str] | None = None,
    ) -> None:
        """Apply `mutate` to the newest state and CAS it in. After a lost race the write is
        recomputed on the new state if `reevaluate` (the mutation checks for itself that
        it still may), else only if none of the `watch` paths changed since the first
        attempt (a list the first `mutate` may still add to). `seed` adds files a
        non-empty write needs (e.g. the first commit's metadata)."""
        with self.mu:
            snap = first = self.fetch() if fresh or self.snap is None else self.snap
            for attempt in range(MAX_ATTEMPTS):
                moved = [p for p in watch if snap.files.get(p) != first.files.get(p)]
                if moved and not reevaluate:
                    why = (describe_move or _changed_paths)(snap, moved)
                    raise StateMovedError(
                        f"state moved: {self.ref} changed under this write ({why}); "
                        "re-plan and apply again"
                    )
                changes = {
                    p: d
                    for p, d in mutate(snap).items()
                    if (d is None and p in snap.files)
                    or (d is not None and (p not in snap.files or self.blob(snap.files[p]) != d))
                }
                if not changes:
                    return
                if seed is not None:
                    changes = {**seed(snap), **changes}
                new = self._commit(snap, changes, message)
                if self._swap(snap, cast(str, new.sha)):
                    self.snap = new
                    self._lease = new.sha
                    return
                snap = cast(Snapshot, self.snap)
                # Writers of other environments share the ref: back off with jitter.
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            raise StateMovedError(
                f"state moved: {self.ref} kept changing under this write ({message}); "
                "re-plan and apply again"
            )

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def git_error(stderr: str) -> str:
    """The line of git's stderr that says why, with any credentials in URLs masked."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    line = next((ln for ln in reversed(lines) if ln.startswith(("fatal", "error"))), None)
    return _CREDENTIALS.sub("://***@", line or (lines[-1] if lines else "unknown error"))


def _changed_paths(_snap: Snapshot, moved: Sequence[str]) -> str:
    return "written by another run: " + ", ".join(moved)
