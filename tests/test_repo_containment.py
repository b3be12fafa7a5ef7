"""Nothing outside the manifests repo is ever read: symlinks that leave it, and manifest
paths that climb out of it, are located errors (issue 13), in git mode and on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import commit_all, run_cli

SECRET = "ghp_outside_0123456789abcdefSECRET"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    f = tmp_path / "outside" / "environ"
    f.parent.mkdir()
    f.write_text(f"GITHUB_TOKEN={SECRET}\n")
    return f


def _point_prompt_at(repo: Path, target: str) -> None:
    prompt = repo / "manifests/prompts/support-1.1.0.md"
    prompt.unlink()
    os.symlink(target, prompt)


@pytest.mark.parametrize("ref", [None, "HEAD"])
def test_template_symlink_to_a_file_outside_is_refused_not_read(
    example_repo: Path, outside: Path, ref: str | None
) -> None:
    _point_prompt_at(example_repo, str(outside))
    commit_all(example_repo, "prompt is now a symlink")
    args = ["--repo", str(example_repo), "plan", "--markdown"] + (["--ref", ref] if ref else [])
    r = run_cli(args)
    assert r.code == 1, r.out + r.err
    assert SECRET not in r.out + r.err
    assert "manifests/prompts/support.yaml:" in r.err and "outside the repo" in r.err
    assert "Traceback" not in r.err


def test_relative_symlink_climbing_out_is_refused_in_git_mode(
    example_repo: Path, outside: Path
) -> None:
    rel = os.path.relpath(outside, example_repo / "manifests/prompts")
    _point_prompt_at(example_repo, rel)
    commit_all(example_repo, "relative symlink out")
    r = run_cli(["--repo", str(example_repo), "validate", "--ref", "HEAD"])
    assert r.code == 1 and SECRET not in r.out + r.err
    assert "outside the repo" in r.err


def test_symlink_inside_the_repo_is_followed(example_repo: Path) -> None:
    prompts = example_repo / "manifests/prompts"
    (prompts / "real.md").write_text((prompts / "support-1.1.0.md").read_text())
    _point_prompt_at(example_repo, "real.md")
    commit_all(example_repo, "symlink inside")
    for extra in ([], ["--ref", "HEAD"]):
        r = run_cli(["--repo", str(example_repo), "validate", *extra])
        assert r.code == 0, r.err


def test_manifest_file_symlinked_outside_is_refused(example_repo: Path, outside: Path) -> None:
    evil = outside.parent / "evil.yaml"
    evil.write_text(f"# {SECRET}\napiVersion: reconciler/v1\n")
    os.symlink(evil, example_repo / "manifests/evil.yaml")
    commit_all(example_repo, "manifest symlink")
    for extra in ([], ["--ref", "HEAD"]):
        r = run_cli(["--repo", str(example_repo), "plan", *extra])
        assert r.code == 1 and SECRET not in r.out + r.err
        assert "manifests/evil.yaml:1:1:" in r.err and "outside the repo" in r.err


@pytest.mark.parametrize(
    ("paths", "where", "why"),
    [
        ("[manifests, ../outside]", "reconciler.yaml:1:24:", "leads outside the repo"),
        ("[/etc]", "reconciler.yaml:1:13:", "absolute path"),
    ],
)
def test_manifest_paths_outside_the_repo_are_config_errors(
    example_repo: Path, paths: str, where: str, why: str
) -> None:
    (example_repo / "reconciler.yaml").write_text(f"manifests: {paths}\n")
    r = run_cli(["--repo", str(example_repo), "validate"])
    assert r.code == 1 and where in r.err and why in r.err, r.err
    assert "internal error" not in r.err
