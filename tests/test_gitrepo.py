"""Reading manifests from git objects and the working tree, in real repositories."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import commit_all, git, init_repo, write_files

from reconciler.errors import GitError
from reconciler.gitrepo import ManifestRepo, OutsideRepoError


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = init_repo(tmp_path / "r")
    write_files(
        r,
        {
            "manifests/a.yaml": "a: 1\n",
            "manifests/sub/b.yml": "b: 1\n",
            "manifests/notes.txt": "not a manifest",
            "manifests/prompt.md": "hello",
            "other/c.yaml": "c: 1\n",
        },
    )
    commit_all(r, "first")
    return r


def test_files_at_ref_reads_git_objects_without_touching_the_tree(repo: Path) -> None:
    first = git(repo, "rev-parse", "HEAD")
    write_files(repo, {"manifests/a.yaml": "a: 2\n"})
    commit_all(repo, "second")
    (repo / "manifests" / "a.yaml").write_text("a: dirty\n")
    m = ManifestRepo(repo)
    assert m.files_at(first, ["manifests"]) == {
        "manifests/a.yaml": b"a: 1\n",
        "manifests/sub/b.yml": b"b: 1\n",
    }
    assert m.files_at("HEAD", ["manifests"])["manifests/a.yaml"] == b"a: 2\n"
    assert m.files_at(None, ["manifests"])["manifests/a.yaml"] == b"a: dirty\n"
    assert (repo / "manifests" / "a.yaml").read_text() == "a: dirty\n"
    assert m.read_file_at(first, "manifests/prompt.md") == b"hello"
    assert m.read_file_at(first, "manifests/missing.md") is None
    with pytest.raises(OutsideRepoError):  # issue 13: leaving the repo is an error, not "missing"
        m.read_file_at(None, "../outside")


def test_head_dirty_and_resolve(repo: Path) -> None:
    m = ManifestRepo(repo)
    head = git(repo, "rev-parse", "HEAD")
    assert m.head() == head
    assert m.resolve("main") == head
    assert not m.is_dirty(["manifests"])
    (repo / "other" / "c.yaml").write_text("c: 2\n")
    assert not m.is_dirty(["manifests"])
    (repo / "manifests" / "new.yaml").write_text("x: 1\n")
    assert m.is_dirty(["manifests"])
    git(repo, "tag", "-a", "v1", "-m", "v1")
    assert m.resolve("v1") == head


def test_unknown_ref_is_a_git_error(repo: Path) -> None:
    with pytest.raises(GitError, match="unknown git ref 'nope'"):
        ManifestRepo(repo).files_at("nope", ["manifests"])


def test_manifests_root_in_a_subdirectory(repo: Path) -> None:
    m = ManifestRepo(repo / "manifests")
    assert set(m.files_at("HEAD", ["."])) == {"a.yaml", "sub/b.yml"}
    assert set(m.files_at(None, ["."])) == {"a.yaml", "sub/b.yml"}
    assert m.read_file_at("HEAD", "prompt.md") == b"hello"
    base = git(repo, "rev-parse", "HEAD")
    write_files(repo, {"manifests/a.yaml": "a: 3\n", "other/c.yaml": "c: 3\n"})
    sha = commit_all(repo, "change both")
    write_files(repo, {"other/c.yaml": "c: 4\n"})
    commit_all(repo, "outside the manifests root")
    assert m.commits_since(base, ["."]) == [sha]
    assert m.subject(sha) == "change both"


def test_not_a_git_repo_still_reads_the_working_tree(tmp_path: Path) -> None:
    write_files(tmp_path, {"manifests/a.yaml": "a: 1\n", "manifests/.hidden/x.yaml": "x"})
    m = ManifestRepo(tmp_path)
    assert m.head() is None
    assert not m.is_dirty(["manifests"])
    assert m.files_at(None, ["manifests"]) == {"manifests/a.yaml": b"a: 1\n"}
    with pytest.raises(GitError, match="not inside a git repository"):
        m.files_at("HEAD", ["manifests"])


def test_repo_without_commits(tmp_path: Path) -> None:
    r = init_repo(tmp_path / "empty")
    write_files(r, {"manifests/a.yaml": "a: 1\n"})
    assert ManifestRepo(r).head() is None


def test_commits_since(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    write_files(repo, {"other/c.yaml": "c: 9\n"})
    commit_all(repo, "unrelated")
    write_files(repo, {"manifests/a.yaml": "a: 9\n"})
    touching = commit_all(repo, "related")
    m = ManifestRepo(repo)
    assert m.commits_since(base, ["manifests"]) == [touching]
    assert m.is_ancestor(base, touching) and not m.is_ancestor(touching, base)
    with pytest.raises(GitError, match="not an ancestor of HEAD"):
        m.commits_since(git(repo, "commit-tree", "-m", "x", "HEAD^{tree}"), ["manifests"])


def _change(repo: Path, text: str, msg: str, rel: str = "manifests/a.yaml") -> str:
    write_files(repo, {rel: text})
    return commit_all(repo, msg)


def test_revert_matches_git_revert_and_is_recognised(repo: Path, tmp_path: Path) -> None:
    b = _change(repo, "a: 2\n", "bump a")
    _change(repo, "b: 2\n", "bump b", "manifests/sub/b.yml")
    twin = tmp_path / "twin"
    git(tmp_path, "clone", "-q", str(repo), str(twin))
    git(twin, "-c", "user.name=x", "-c", "user.email=x@x", "revert", "--no-edit", b)
    m = ManifestRepo(repo)
    sha = m.revert([b])
    assert git(repo, "rev-parse", f"{sha}^{{tree}}") == git(twin, "rev-parse", "HEAD^{tree}")
    msg = m.message(sha)
    assert msg.startswith('Revert "bump a"\n\nThis reverts commit ' + b)
    assert f"Rollback-Of: {b}" in msg
    assert m.reverted_commits(sha) == [b]
    assert m.is_exact_revert(sha, [b])
    # git's own revert message is recognised too
    hand = git(twin, "rev-parse", "HEAD")
    assert ManifestRepo(twin).reverted_commits(hand) == [b]
    assert ManifestRepo(twin).is_exact_revert(hand, [b])


def test_forged_revert_message_is_not_an_exact_revert(repo: Path) -> None:
    b = _change(repo, "a: 2\n", "bump a")
    write_files(repo, {"manifests/a.yaml": "a: 1\n", "manifests/evil.yaml": "x: 1\n"})
    forged = commit_all(repo, f"Revert 'bump a'\n\nThis reverts commit {b}.")
    m = ManifestRepo(repo)
    assert m.reverted_commits(forged) == [b]
    assert not m.is_exact_revert(forged, [b])


def test_revert_several_and_merge_commits(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    _change(repo, "a: 2\n", "one")
    git(repo, "checkout", "-q", "-b", "feature")
    _change(repo, "b: 9\n", "feature work", "manifests/sub/b.yml")
    git(repo, "checkout", "-q", "main")
    _change(repo, "c: 2\n", "unrelated", "other/c.yaml")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge feature", "feature")
    m = ManifestRepo(repo)
    since = m.commits_since(base, ["manifests"])
    assert [m.subject(s) for s in since] == ["merge feature", "one"]
    sha = m.revert(since)
    files = m.files_at(sha, ["manifests"])
    assert files["manifests/a.yaml"] == b"a: 1\n" and files["manifests/sub/b.yml"] == b"b: 1\n"
    assert (repo / "other/c.yaml").read_text() == "c: 2\n"
    assert m.subject(sha) == "Revert 2 commits"
    assert set(m.reverted_commits(sha)) == set(since)
    assert m.is_exact_revert(sha, since)


def test_conflicting_revert_leaves_everything_untouched(repo: Path) -> None:
    b = _change(repo, "a: 2\n", "bump a")
    _change(repo, "a: 3\n", "bump a again")
    (repo / "untracked.txt").write_text("keep me")
    head = git(repo, "rev-parse", "HEAD")
    status = git(repo, "status", "--porcelain")
    with pytest.raises(GitError, match=r"conflicts .* in manifests/a\.yaml; nothing was changed"):
        ManifestRepo(repo).revert([b])
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain") == status
    assert (repo / "manifests/a.yaml").read_text() == "a: 3\n"


def test_revert_refuses_a_dirty_tree(repo: Path) -> None:
    b = _change(repo, "a: 2\n", "bump a")
    (repo / "manifests/sub/b.yml").write_text("dirty\n")
    with pytest.raises(GitError, match="uncommitted changes"):
        ManifestRepo(repo).revert([b])


def test_revert_on_a_branch_pushes_and_leaves_checkout(repo: Path, tmp_path: Path) -> None:
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    b = _change(repo, "a: 2\n", "bump a")
    head = git(repo, "rev-parse", "HEAD")
    m = ManifestRepo(repo)
    sha = m.revert([b], branch="rollback-a")
    m.push("rollback-a")
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "branch", "--show-current") == "main"
    assert (repo / "manifests/a.yaml").read_text() == "a: 2\n"
    assert git(origin, "rev-parse", "refs/heads/rollback-a") == sha
    assert git(repo, "worktree", "list").count("\n") == 0
