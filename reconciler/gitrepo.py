"""The manifests repo as git sees it: files at a ref (no checkout), commits, reverts.

The manifests root may be a subdirectory of a git work tree; every path in and out of
this module is relative to the manifests root, with forward slashes. A root that is
not in git at all still works for the working tree (no commit is recorded then).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from reconciler.errors import GitError

#: Commits reconciler makes where no identity is configured (CI runners often have no
#: user.name): state commits always, a revert when git has none to give it.
BOT_IDENTITY = {
    "GIT_AUTHOR_NAME": "reconciler",
    "GIT_AUTHOR_EMAIL": "reconciler@localhost",
    "GIT_COMMITTER_NAME": "reconciler",
    "GIT_COMMITTER_EMAIL": "reconciler@localhost",
}

if TYPE_CHECKING:
    import git

MANIFEST_SUFFIXES = (".yaml", ".yml")
_SYMLINK_MODE = 0o120000
_MAX_LINKS = 8


class OutsideRepoError(GitError):
    """A path, or a symlink on the way to it, leads outside the manifests root."""


class Files(dict[str, bytes]):
    """Manifest files read at a commit (or from disk), path → bytes, sorted by path;
    `refused` names the ones not read (a symlink leading outside the root) and why."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: dict[str, str] = {}

    def sorted(self) -> Files:
        out = Files()
        out.update(sorted(self.items()))
        out.refused = dict(sorted(self.refused.items()))
        return out


def _inside(path: str) -> str | None:
    """`path` normalised, or None when it leaves the root (absolute, or `..` past it)."""
    if path.startswith("/"):
        return None
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../"):
        return None
    return norm


def _relative(f: Path, root: Path) -> str:
    return f.relative_to(root).as_posix()


def _relative_or_none(f: Path, root: Path) -> str | None:
    try:
        return _relative(f, root)
    except ValueError:
        return None


_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
_REVERTS = re.compile(r"^This reverts commit ([0-9a-f]{7,40})", re.MULTILINE)
_TRAILER = re.compile(r"^Rollback-Of:\s*([0-9a-f]{7,40})\s*$", re.MULTILINE)


def revert_message(subjects: Sequence[tuple[str, str]]) -> str:
    """`git revert`'s message for (sha, subject) pairs, plus one Rollback-Of trailer each."""
    if len(subjects) == 1:
        title = f'Revert "{subjects[0][1]}"'
    else:
        title = f"Revert {len(subjects)} commits"
    body = "\n".join(f"This reverts commit {sha}." for sha, _ in subjects)
    trailers = "\n".join(f"Rollback-Of: {sha}" for sha, _ in subjects)
    return f"{title}\n\n{body}\n\n{trailers}\n"


def _is_manifest(name: str) -> bool:
    return name.endswith(MANIFEST_SUFFIXES)


class ManifestRepo:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self._real_root = Path(os.path.realpath(self.root))
        #: Root-relative targets of every symlink followed at a commit: a commit that
        #: changes one changes what was read (the gate's history compares by path).
        self.followed: set[str] = set()
        self._repo: git.Repo | None = None
        if _maybe_in_git(self.root):
            import git
            from git.exc import InvalidGitRepositoryError, NoSuchPathError

            with contextlib.suppress(InvalidGitRepositoryError, NoSuchPathError):
                self._repo = git.Repo(self.root, search_parent_directories=True)
        self._prefix = ""
        if self._repo is not None and self._repo.working_tree_dir is not None:
            top = Path(self._repo.working_tree_dir).resolve()
            rel = self.root.relative_to(top).as_posix()
            self._prefix = "" if rel == "." else rel + "/"

    # -- plumbing --------------------------------------------------------------------

    @property
    def repo(self) -> git.Repo:
        if self._repo is None:
            raise GitError(f"{self.root} is not inside a git repository")
        return self._repo

    def _commit(self, ref: str) -> git.Commit:
        import git
        from git.exc import BadName, GitCommandError

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
        from git.exc import GitCommandError

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

    def identity(self) -> str | None:
        """`user.name <user.email>` as git would sign a commit here (None: not set)."""
        if self._repo is None:
            return None
        reader = self._repo.config_reader()
        name = str(reader.get_value("user", "name", "")).strip()
        email = str(reader.get_value("user", "email", "")).strip()
        if name and email:
            return f"{name} <{email}>"
        return name or email or None

    def resolve(self, ref: str) -> str:
        return self._commit(ref).hexsha

    def files_at(self, ref: str | None, paths: Sequence[str]) -> Files:
        """Every manifest file under `paths`: from git objects at `ref`, or from disk.

        A symlink is followed only while it stays inside the manifests root; one that
        leads outside is refused (named in `Files.refused`), never read.
        """
        if ref is None:
            return self._files_on_disk(paths)
        import git

        tree = self._commit(ref).tree
        found = Files()
        for p in paths:
            sub = PurePosixPath(p).as_posix().strip("/")
            full = (self._prefix + sub if sub not in ("", ".") else self._prefix).rstrip("/")
            try:
                node = tree / full if full else tree
            except KeyError:
                continue
            items = [node] if isinstance(node, git.Blob) else node.traverse()
            for item in items:
                if not (isinstance(item, git.Blob) and _is_manifest(item.name)):
                    continue
                rel = self._rel(str(item.path))
                if rel is None:
                    continue
                try:
                    data = self._blob_data(tree, item)
                except OutsideRepoError as e:
                    found.refused[rel] = e.message
                    continue
                if data is not None:
                    found[rel] = data
        return found.sorted()

    def _blob_data(self, tree: git.Tree, blob: git.Blob) -> bytes | None:
        """A blob's bytes, following symlinks (mode 120000) inside the manifests root."""
        import git

        for _ in range(_MAX_LINKS):
            if blob.mode != _SYMLINK_MODE:
                return bytes(blob.data_stream.read())
            rel = self._rel(str(blob.path)) or str(blob.path)
            link = blob.data_stream.read().decode("utf-8", "surrogateescape")
            target = _inside(posixpath.join(posixpath.dirname(rel), link))
            if target is None:
                raise OutsideRepoError(f"{rel} is a symlink to {link!r}, outside the repo")
            self.followed.add(target)
            try:
                node = tree / (self._prefix + target)
            except KeyError:
                return None
            if not isinstance(node, git.Blob):
                return None
            blob = node
        raise OutsideRepoError(f"{blob.path}: too many levels of symlinks")

    def _files_on_disk(self, paths: Sequence[str]) -> Files:
        found = Files()
        for p in paths:
            base = self.root / p
            if base.is_file():
                candidates: Iterable[Path] = [base] if _is_manifest(base.name) else []
            elif base.is_dir():
                candidates = _walk_manifests(base)
            else:
                continue
            for f in candidates:
                rel = _relative(f, self.root)
                try:
                    self._check_on_disk(f, rel)
                    found[rel] = f.read_bytes()
                except OutsideRepoError as e:
                    found.refused[rel] = e.message
                except OSError as e:
                    raise GitError(f"cannot read {rel}: {e.strerror}") from None
        return found.sorted()

    def _check_on_disk(self, f: Path, rel: str) -> None:
        real = Path(os.path.realpath(f))
        if not real.is_relative_to(self._real_root):
            raise OutsideRepoError(f"{rel} leads outside the repo (to {real})")

    def read_file_at(self, ref: str | None, path: str) -> bytes | None:
        """One file (a templateFile, say) at `ref` or on disk; None when it is missing.

        Raises OutsideRepoError when the path, or a symlink on the way, leaves the root.
        """
        rel = _inside(PurePosixPath(path).as_posix())
        if rel is None:
            raise OutsideRepoError(f"{path} is outside the repo")
        if ref is None:
            f = self.root / rel
            if not f.is_file():
                return None
            self._check_on_disk(f, rel)
            try:
                return f.read_bytes()
            except OSError:
                return None
        import git

        tree = self._commit(ref).tree
        try:
            node = tree / (self._prefix + rel)
        except KeyError:
            return None
        return self._blob_data(tree, node) if isinstance(node, git.Blob) else None

    def is_dirty(self, paths: Sequence[str]) -> bool:
        """Uncommitted or untracked changes under `paths`."""
        return bool(self.dirty_paths(paths))

    def dirty_paths(self, paths: Sequence[str]) -> list[str]:
        """Root-relative paths under `paths` with uncommitted or untracked changes."""
        if self._repo is None or not paths:
            return []
        out = self._git(
            "status", "--porcelain", "-z", "--untracked-files=all", "--",
            *[str(self.root / p) for p in paths],
        )  # fmt: skip
        top = Path(self.repo.working_tree_dir or self.root)
        found = []
        entries = iter(out.split("\0"))
        for entry in entries:
            if len(entry) < 4:
                continue
            if entry[0] in "RC":  # a rename's source path follows; skip it
                next(entries, None)
            rel = _relative_or_none(top / entry[3:], self.root)
            if rel is not None:
                found.append(rel)
        return sorted(set(found))

    def subject(self, sha: str) -> str:
        summary = self._commit(sha).summary
        return summary if isinstance(summary, str) else summary.decode(errors="replace")

    def message(self, sha: str) -> str:
        msg = self._commit(sha).message
        return msg if isinstance(msg, str) else msg.decode(errors="replace")

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        from git.exc import GitCommandError

        try:
            self.repo.git.merge_base("--is-ancestor", ancestor, descendant)
        except GitCommandError:
            return False
        return True

    # -- history the gate walks --------------------------------------------------------

    def first_parent(self, sha: str) -> str | None:
        parents = self._commit(sha).parents
        return parents[0].hexsha if parents else None

    def commits_between(self, base: str, target: str) -> list[str]:
        """Every commit reachable from `target` but not from `base` (all parents: a
        merged branch's own commits too), oldest first."""
        out = self._git("rev-list", "--topo-order", "--reverse", f"{base}..{target}")
        return out.split()

    def ancestry(self, target: str, *, first_parent: bool = False) -> list[str]:
        """Every commit reachable from `target` (or only its first-parent chain), oldest
        first: an environment with nothing recorded has all of them behind it."""
        args = ["rev-list", "--topo-order", "--reverse"]
        if first_parent:
            args.append("--first-parent")
        return self._git(*args, target).split()

    def parent_count(self, sha: str) -> int:
        return len(self._commit(sha).parents)

    def first_parent_chain(self, tip: str, count: int) -> list[str]:
        """`tip` and its first-parent ancestors, `count` commits in all (a rebase merge
        puts a pull request's commits on the base branch as such a chain)."""
        if count <= 0:
            return []
        return self._git("rev-list", "--first-parent", f"--max-count={count}", tip).split()

    def first_parent_range(self, after: str, tip: str) -> list[str]:
        """The first-parent commits from `tip` back to, not including, what `after`
        reaches (newest first): a branch merged in that `after` already holds is not
        walked into."""
        return self._git("rev-list", "--first-parent", f"{after}..{tip}").split()

    def changed_paths(self, sha: str) -> list[str]:
        """Root-relative paths `sha` changes against its first parent (all of its files
        for a root commit); paths outside the manifests root are left out."""
        parent = self.first_parent(sha) or _EMPTY_TREE
        out = self._git("diff-tree", "-r", "--name-only", "--no-commit-id", "-z", parent, sha)
        return [rel for p in out.split("\0") if p and (rel := self._rel(p)) is not None]

    def tree(self, sha: str) -> str:
        return str(self._commit(sha).tree.hexsha)

    def merge_base(self, a: str, b: str) -> str | None:
        try:
            return self._git("merge-base", a, b).strip() or None
        except GitError:
            return None

    # -- rollback: reverts made and recognised ------------------------------------------

    def reverted_commits(self, sha: str) -> list[str]:
        """Commits this commit says it reverts (our trailer or git's own line)."""
        msg = self.message(sha)
        found: list[str] = []
        for short in [*_TRAILER.findall(msg), *_REVERTS.findall(msg)]:
            try:
                full = self.resolve(short)
            except GitError:  # a commit from a repo we cannot see
                continue
            if full not in found:
                found.append(full)
        return found

    def is_exact_revert(self, sha: str, reverted: Sequence[str]) -> bool:
        """True when `sha` changes exactly the inverse of `reverted` and nothing else.

        The message alone proves nothing: anyone can write "This reverts commit". The
        lighter rollback policy applies only when the tree matches what reverting those
        commits on the parent gives (built in a scratch index, no checkout).
        """
        from git.exc import GitCommandError

        c = self._commit(sha)
        if len(c.parents) != 1 or not reverted:
            return False
        try:
            order = self._newest_first(reverted, c.hexsha)
        except GitError:
            return False
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            try:
                self.repo.git.read_tree(c.parents[0].hexsha, env=env)
                for r in order:
                    rc = self._commit(r)
                    base = rc.parents[0].hexsha if rc.parents else _EMPTY_TREE
                    patch = Path(tmp) / "patch"
                    self.repo.git.diff(base, rc.hexsha, "--binary", f"--output={patch}")
                    if patch.stat().st_size:
                        self.repo.git.apply("--cached", "-R", "--3way", str(patch), env=env)
                tree = self.repo.git.write_tree(env=env)
            except GitCommandError:
                return False
        return bool(tree == c.tree.hexsha)

    def _newest_first(self, shas: Sequence[str], tip: str) -> list[str]:
        """Order commits as history does (reverts must undo the newest first)."""
        wanted = set(shas)
        order = [c for c in self._git("rev-list", "--topo-order", tip).split() if c in wanted]
        if len(order) != len(wanted):
            missing = sorted(wanted - set(order))
            raise GitError(f"{missing[0][:12]} is not in the history of {tip}")
        return order

    def commits_since(self, after: str, paths: Sequence[str]) -> list[str]:
        """First-parent commits after `after` touching `paths`, newest first (for --to)."""
        if not self.is_ancestor(after, "HEAD"):
            raise GitError(f"{after[:12]} is not an ancestor of HEAD: nothing to roll back to")
        specs = [str(self.root / p) for p in paths]
        return self._git("rev-list", "--first-parent", f"{after}..HEAD", "--", *specs).split()

    def revert(self, commits: Sequence[str], *, branch: str | None = None) -> str:
        """One commit reverting `commits` (newest first), as `git revert --no-edit` would.

        Without `branch` it commits on the current branch and refuses a dirty tree; with
        `branch` it works in a scratch worktree, so the user's checkout is untouched. On
        a conflict nothing changes and the GitError names the conflicting files.
        """
        if not commits:
            raise GitError("nothing to revert")
        full = self._newest_first([self.resolve(c) for c in commits], "HEAD")
        subjects = [(sha, self.subject(sha)) for sha in full]
        message = revert_message(subjects)
        if branch is None:
            if self.repo.is_dirty(untracked_files=False):
                raise GitError(
                    "the working tree has uncommitted changes: commit or stash them first"
                )
            return self._revert_in(self.repo, full, message)
        if branch in [h.name for h in self.repo.heads]:
            raise GitError(f"branch {branch!r} already exists")
        with tempfile.TemporaryDirectory() as tmp:
            where = str(Path(tmp) / "wt")
            self._git("worktree", "add", "--detach", where, "HEAD")
            try:
                import git

                sha = self._revert_in(git.Repo(where), full, message)
                self._git("branch", branch, sha)
            finally:
                self._git("worktree", "remove", "--force", where)
        return sha

    def _revert_in(self, repo: git.Repo, commits: Sequence[str], message: str) -> str:
        from git.exc import GitCommandError

        try:
            for sha in commits:
                mainline = ["-m", "1"] if len(self._commit(sha).parents) > 1 else []
                repo.git.revert("--no-commit", *mainline, sha)
        except GitCommandError:
            conflicts = sorted(
                {
                    line[3:]
                    for line in repo.git.status("--porcelain").splitlines()
                    if line[:2] in ("UU", "AA", "DU", "UD", "AU", "UA", "DD")
                }
            )
            try:
                repo.git.revert("--abort")
            except GitCommandError:
                repo.git.reset("--hard", "HEAD")
            raise GitError(
                "the revert conflicts with later changes"
                + (f" in {', '.join(conflicts)}" if conflicts else "")
                + "; nothing was changed: revert fewer commits or resolve by hand"
            ) from None
        if not repo.is_dirty(untracked_files=False):
            repo.git.revert("--quit")
            raise GitError("those commits are already reverted: nothing to do")
        try:
            repo.git.commit("--no-verify", "-q", "-m", message)
        except GitCommandError:
            # no identity configured (a CI runner's usual state): commit as reconciler
            try:
                repo.git.commit("--no-verify", "-q", "-m", message, env=BOT_IDENTITY)
            except GitCommandError as e:
                repo.git.reset("--hard", "HEAD")
                detail = (str(e.stderr).strip() or str(e)).splitlines()[-1:]
                raise GitError(f"git could not commit the revert: {' '.join(detail)}") from None
        return str(repo.head.commit.hexsha)

    def push(self, branch: str, remote: str = "origin") -> None:
        self._git("push", "-q", remote, f"refs/heads/{branch}:refs/heads/{branch}")


def _maybe_in_git(root: Path) -> bool:
    """False only when no directory from `root` up holds `.git` or looks like a git
    directory itself, and GIT_DIR is unset: GitPython would find no repository there.
    Such a root (a plain directory of manifests) then never loads GitPython, whose
    import costs about 30 ms and runs `git version`."""
    if os.environ.get("GIT_DIR"):
        return True
    return any(
        os.path.lexists(d / ".git") or os.path.isfile(d / "HEAD") for d in (root, *root.parents)
    )


def _walk_manifests(base: Path) -> Iterable[Path]:
    """Manifest files under `base`, skipping `.git`, `.reconciler` and other hidden dirs."""
    for d, dirs, files in os.walk(base):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        yield from (Path(d) / f for f in sorted(files) if _is_manifest(f))
