"""Reading manifests from git objects and the working tree, in real repositories."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import commit_all, git, init_repo, write_files

from reconciler.errors import GitError
from reconciler.gitrepo import ManifestRepo


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
    assert m.read_file_at(None, "../outside") is None


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
    write_files(repo, {"manifests/a.yaml": "a: 3\n", "other/c.yaml": "c: 3\n"})
    sha = commit_all(repo, "change both")
    assert m.changed_paths(sha) == ["a.yaml"]
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


def test_commits_touching(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    write_files(repo, {"other/c.yaml": "c: 9\n"})
    commit_all(repo, "unrelated")
    write_files(repo, {"manifests/a.yaml": "a: 9\n"})
    touching = commit_all(repo, "related")
    m = ManifestRepo(repo)
    assert m.commits_touching(base, ["manifests"]) == [touching]
    assert m.is_ancestor(base, touching) and not m.is_ancestor(touching, base)
