"""make_source(settings): which source reconciler.yaml and the CI variables name, with
the file's path and the forge deadline passed explicitly (no faked variables)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import init_repo, write_files

from reconciler.config import load_settings
from reconciler.errors import ConfigError
from reconciler.forge import DEFAULT_DEADLINE, ForgeSource, make_source
from reconciler.forge.file import FileSource
from reconciler.forge.github import GitHubSource
from reconciler.forge.gitlab import GitLabSource


def repo_with(tmp_path: Path, approvals: str) -> Path:
    repo = init_repo(tmp_path / "r")
    write_files(repo, {"reconciler.yaml": f"approvals: {approvals}\n"})
    return repo


def test_none_means_no_source(tmp_path: Path) -> None:
    settings = load_settings(repo_with(tmp_path, "{source: none}"), env={})
    assert make_source(settings) is None


def test_github_from_ci_variables_and_reconciler_yaml(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, "{source: github, repository: acme/manifests}")
    env = {"GITHUB_TOKEN": "ghs_x", "GITHUB_API_URL": "http://127.0.0.1:9"}
    src = make_source(load_settings(repo, env=env))
    assert isinstance(src, GitHubSource) and isinstance(src, ForgeSource)
    assert src.repository == "acme/manifests" and src._api.http.deadline == DEFAULT_DEADLINE
    src.close()
    env |= {"GITHUB_REPOSITORY": "acme/other", "RECONCILER_FORGE_TIMEOUT": "2.5"}
    src = make_source(load_settings(repo, env=env))
    assert isinstance(src, GitHubSource)
    assert src.repository == "acme/other" and src._api.http.deadline == 2.5
    src.close()


def test_gitlab_from_ci_variables(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, "{source: gitlab}")
    env = {"GITLAB_TOKEN": "glpat-x", "CI_PROJECT_ID": "42", "RECONCILER_FORGE_TIMEOUT": "7"}
    src = make_source(load_settings(repo, env=env))
    assert isinstance(src, GitLabSource) and src.project == "42"
    assert src._api.http.deadline == 7.0
    src.close()


@pytest.mark.parametrize(
    ("approvals", "missing"),
    [
        ("{source: github}", "GITHUB_TOKEN (a token that can read pull requests); GITHUB_REPO"),
        ("{source: gitlab}", "GITLAB_TOKEN (a project access token"),
        (
            "{source: file}",
            "--approvals-file or RECONCILER_APPROVALS_FILE (outside the manifests repo)",
        ),
    ],
)
def test_missing_configuration_is_named(tmp_path: Path, approvals: str, missing: str) -> None:
    settings = load_settings(repo_with(tmp_path, approvals), env={})
    with pytest.raises(ConfigError, match="is not configured: missing") as e:
        make_source(settings)
    assert missing in e.value.message


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_a_bad_forge_timeout_is_a_config_error(tmp_path: Path, value: str) -> None:
    repo = repo_with(tmp_path, "{source: github, repository: acme/manifests}")
    settings = load_settings(repo, env={"GITHUB_TOKEN": "t", "RECONCILER_FORGE_TIMEOUT": value})
    with pytest.raises(ConfigError) as e:
        make_source(settings)
    assert e.value.message == (
        f"RECONCILER_FORGE_TIMEOUT must be a positive number of seconds, got {value!r}"
    )


def test_the_approvals_file_comes_only_from_outside_the_repo(tmp_path: Path) -> None:
    """Issue 12: a file named in the repo (or lying in it) could be written by the very
    change it judges; only --approvals-file / RECONCILER_APPROVALS_FILE name it, outside."""
    with pytest.raises(ConfigError) as refused:
        load_settings(repo_with(tmp_path, "{source: file, file: approvals.json}"), env={})
    assert "RECONCILER_APPROVALS_FILE" in (refused.value.details or "")
    repo = repo_with(tmp_path / "second", "{source: file}")
    named = tmp_path / "elsewhere.json"
    src = make_source(load_settings(repo, env={"RECONCILER_APPROVALS_FILE": str(named)}))
    assert isinstance(src, FileSource) and src.path == named
    src = make_source(load_settings(repo, env={}, approvals_file=named))
    assert isinstance(src, FileSource) and src.path == named
    with pytest.raises(ConfigError, match="inside the manifests repo"):
        make_source(load_settings(repo, env={"RECONCILER_APPROVALS_FILE": str(repo / "a.json")}))
