"""`reconciler promote` through the CLI on a libfaketime clock: what staging has applied,
whether production may take it, and the manifest edit on a branch, which the gate then
lets through because staging's evidence is in state."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import commit_all
from fakes.forge import FakeGitHub
from promotion_world import as_json, at, cli, make_repo, needs_faketime

pytestmark = [needs_faketime, pytest.mark.slow]  # a process per command (libfaketime)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def staging_runs_1_1_0(repo: Path) -> None:
    """Production pinned to 1.0.0 by an override; staging moves to 1.1.0."""
    deps = repo / "manifests" / "deployments.yaml"
    deps.write_text(
        "# the chat assistant\n"
        + deps.read_text().replace("answer@1.0.0", "answer@1.1.0")
        + "  overrides:\n    production: {prompt: answer@1.0.0}\n"
    )
    commit_all(repo, "staging takes 1.1.0, production stays")


def test_promote_shows_the_plan_and_writes_the_smallest_edit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    assert cli(repo, "apply", env=at("2030-01-07 10:00:00")).code == 3
    assert cli(repo, "apply", env=at("2030-01-07 12:30:00")).code == 0
    staging_runs_1_1_0(repo)
    assert cli(repo, "apply", env=at("2030-01-08 09:00:00")).code == 0  # production: no change

    early = cli(repo, "promote", "--from", "staging", "--to", "production",
                env=at("2030-01-08 10:00:00"))  # fmt: skip
    assert early.code == 3, early.out + early.err
    assert "NOT ELIGIBLE: is soaking in staging: applied " in early.out
    assert "(eligible at 2030-01-08T11:00:0" in early.out
    assert "prompt: 'answer@1.0.0' → 'answer@1.1.0'" in early.out
    refused = cli(repo, "promote", "--from", "staging", "--to", "production",
                  "--branch", "promote-chat", env=at("2030-01-08 10:00:00"))  # fmt: skip
    assert refused.code == 1 and "not eligible: no branch written" in refused.err

    r = cli(repo, "promote", "--from", "staging", "--to", "production", "chat",
            "--branch", "promote-chat", env=at("2030-01-08 12:00:00"))  # fmt: skip
    assert r.code == 0, r.out + r.err
    assert "deployment.chat" in r.out and ": eligible" in r.out
    assert "on branch promote-chat" in r.out
    diff = git(repo, "diff", "main", "promote-chat")
    assert "-  overrides:" in diff and "-    production: {prompt: answer@1.0.0}" in diff
    assert "# the chat assistant" in git(repo, "show", "promote-chat:manifests/deployments.yaml")
    message = git(repo, "log", "-1", "--format=%B", "promote-chat")
    assert message.startswith("Promote deployment.chat from staging to production")

    git(repo, "merge", "-q", "--ff-only", "promote-chat")
    applied = cli(repo, "apply", "--env", "production", env=at("2030-01-08 12:05:00"))
    assert applied.code == 0, applied.out + applied.err
    doc = as_json(cli(repo, "promote", "--from", "staging", "--to", "production", "--json",
                      env=at("2030-01-08 12:10:00")))  # fmt: skip
    (item,) = doc["deployments"]
    assert item["digest"] == item["targetDigest"] and item["changes"] == {}


def test_promote_names_unknown_environments_and_deployments(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    r = cli(repo, "promote", "--from", "staging", "--to", "prod")
    assert r.code == 1 and "unknown environment 'prod'" in r.err
    r = cli(repo, "promote", "--from", "staging", "--to", "production", "nope")
    assert r.code == 1 and "not applied in 'staging': nope" in r.err


def test_promote_pushes_and_opens_a_pull_request_with_the_evidence(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "reconciler.yaml").write_text(
        "approvals: {source: github, repository: acme/manifests}\n"
    )
    commit_all(repo, "config")
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    assert cli(repo, "apply", env=at("2030-01-07 10:00:00")).code == 3
    assert cli(repo, "apply", env=at("2030-01-07 12:30:00")).code == 0
    staging_runs_1_1_0(repo)
    assert cli(repo, "apply", env=at("2030-01-08 09:00:00")).code == 0
    with FakeGitHub() as gh:
        env = {"GITHUB_TOKEN": gh.token, "GITHUB_API_URL": gh.url, **at("2030-01-08 12:00:00")}
        r = cli(repo, "promote", "--from", "staging", "--to", "production",
                "--branch", "promote-chat", "--open-pr", env=env)  # fmt: skip
        assert r.code == 0, r.out + r.err
        assert "pull request #1" in r.out and gh.token not in r.out + r.err
        pr = gh.pulls[1]
        assert pr["head"]["ref"] == "promote-chat" and pr["base"]["ref"] == "main"
        assert pr["title"] == "Promote chat from staging to production"
        assert "sha256:" in pr["body"] and "prompt: `answer@1.0.0` → `answer@1.1.0`" in pr["body"]
        assert "this text is not evidence" in pr["body"]
    assert git(origin, "rev-parse", "refs/heads/promote-chat") == git(
        repo, "rev-parse", "promote-chat"
    )
