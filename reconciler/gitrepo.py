"""The manifests repo as git sees it: files at a ref (no checkout), commits, reverts.

The manifests root may be a subdirectory of a git work tree; every path in and out of
this module is relative to the manifests root, with forward slashes. A root that is
not in git at all still works for the working tree (no commit is recorded then).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import git
from git.exc import BadName, GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from reconciler.errors import GitError

MANIFEST_SUFFIXES = (".yaml", ".yml")


def _is_manifest(name: str) -> bool:
    return name.endswith(MANIFEST_SUFFIXES)


class ManifestRepo:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self._repo: git.Repo | None
        try:
            self._repo = git.Repo(self.root, search_parent_directories=True)
        except (InvalidGitRepositoryError, NoSuchPathError):
            self._repo = None
        self._prefix = ""
        if self._repo is not None and self._repo.working_tree_dir is not None:
            top = Path(self._repo.working_tree_dir).resolve()
            rel = self.root.relative_to(top).as_posix()
            self._prefix = "" if rel == "." else rel + "/"

    # -- plumbing --------------------------------------------------------------------

    @property
    def is_git(self) -> bool:
        return self._repo is not None

    @property
    def repo(self) -> git.Repo:
        if self._repo is None:
            raise GitError(f"{self.root} is not inside a git repository")
        return self._repo

    def _commit(self, ref: str) -> git.Commit:
        try:
            obj = self.repo.rev_parse(ref)
        except (BadName, ValueError, GitCommandError):
            raise GitError(f"unknown git ref {ref!r} in {self.root}") from None
        if isinstance(obj, git.TagObject):
            obj = obj.object
        if not isinstance(obj, git.Commit):
            raise GitError(f"git ref {ref!r} is a {obj.type}, not a commit")
        return obj

    def _rel(self, repo_path: str) -> str | None:
        """Repo-relative → manifests-root-relative (None when outside the root)."""
        if not repo_path.startswith(self._prefix):
            return None
        return repo_path[len(self._prefix) :]

    def _git(self, *args: str) -> str:
        try:
            return str(self.repo.git.execute(["git", *args], with_extended_output=False))
        except GitCommandError as e:
            detail = (e.stderr or "").strip().removeprefix("stderr: ").strip("'\n ")
            raise GitError(f"git {args[0]} failed: {detail or e}") from None

    # -- reading -----------------------------------------------------------------------

    def head(self) -> str | None:
        """The commit checked out, or None (not git, or no commit yet)."""
        if self._repo is None:
            return None
        try:
            return self._repo.head.commit.hexsha
        except ValueError:
            return None

    def resolve(self, ref: str) -> str:
        return self._commit(ref).hexsha

    def files_at(self, ref: str | None, paths: Sequence[str]) -> dict[str, bytes]:
        """Every manifest file under `paths`: from git objects at `ref`, or from disk."""
        if ref is None:
            return self._files_on_disk(paths)
        tree = self._commit(ref).tree
        out: dict[str, bytes] = {}
        for p in paths:
            sub = PurePosixPath(p).as_posix().strip("/")
            full = (self._prefix + sub if sub not in ("", ".") else self._prefix).rstrip("/")
            try:
                node = tree / full if full else tree
            except KeyError:
                continue
            if isinstance(node, git.Blob):
                rel = self._rel(str(node.path))
                if rel is not None and _is_manifest(node.name):
                    out[rel] = node.data_stream.read()
                continue
            for item in node.traverse():
                if isinstance(item, git.Blob) and _is_manifest(item.name):
                    rel = self._rel(str(item.path))
                    if rel is not None:
                        out[rel] = item.data_stream.read()
        return dict(sorted(out.items()))

    def _files_on_disk(self, paths: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for p in paths:
            base = self.root / p
            if base.is_file():
                candidates: Iterable[Path] = [base] if _is_manifest(base.name) else []
            elif base.is_dir():
                candidates = _walk_manifests(base)
            else:
                continue
            for f in candidates:
                rel = f.relative_to(self.root).as_posix()
                try:
                    out[rel] = f.read_bytes()
                except OSError as e:
                    raise GitError(f"cannot read {rel}: {e.strerror}") from None
        return dict(sorted(out.items()))

    def read_file_at(self, ref: str | None, path: str) -> bytes | None:
        """One file (a templateFile, say) at `ref` or on disk; None when it is missing."""
        rel = PurePosixPath(path).as_posix()
        if rel.startswith("../") or rel.startswith("/"):
            return None
        if ref is None:
            f = self.root / rel
            try:
                return f.read_bytes() if f.is_file() else None
            except OSError:
                return None
        try:
            node = self._commit(ref).tree / (self._prefix + rel)
        except KeyError:
            return None
        return node.data_stream.read() if isinstance(node, git.Blob) else None

    def is_dirty(self, paths: Sequence[str]) -> bool:
        """Uncommitted or untracked changes under `paths`."""
        if self._repo is None:
            return False
        out = self._git("status", "--porcelain", "--", *[str(self.root / p) for p in paths])
        return bool(out.strip())

    def subject(self, sha: str) -> str:
        summary = self._commit(sha).summary
        return summary if isinstance(summary, str) else summary.decode(errors="replace")

    def message(self, sha: str) -> str:
        msg = self._commit(sha).message
        return msg if isinstance(msg, str) else msg.decode(errors="replace")

    def changed_paths(self, sha: str) -> list[str]:
        """Manifests-root-relative paths a commit changed (against its first parent)."""
        c = self._commit(sha)
        diffs = c.parents[0].diff(c) if c.parents else c.diff(git.NULL_TREE)
        out = set()
        for d in diffs:
            for p in (d.a_path, d.b_path):
                if p and (rel := self._rel(p)) is not None:
                    out.add(rel)
        return sorted(out)

    def commits_touching(self, after: str | None, paths: Sequence[str]) -> list[str]:
        """Commits after `after` (exclusive) up to HEAD that changed `paths`, oldest first."""
        rev = f"{after}..HEAD" if after else "HEAD"
        specs = [str(self.root / p) for p in paths]
        out = self._git("rev-list", "--reverse", rev, "--", *specs)
        return out.split()

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        try:
            self.repo.git.merge_base("--is-ancestor", ancestor, descendant)
        except GitCommandError:
            return False
        return True


def _walk_manifests(base: Path) -> Iterable[Path]:
    """Manifest files under `base`, skipping `.git`, `.reconciler` and other hidden dirs."""
    for d, dirs, files in os.walk(base):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        yield from (Path(d) / f for f in sorted(files) if _is_manifest(f))
