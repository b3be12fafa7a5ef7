"""Rollback as git revert, end to end: real repos, a bare origin, the local provider."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import commit_all, git, run_cli
from fakes.forge import FakeGitHub

from reconciler.instances import ProviderConfig
from reconciler.providers.local import LocalProvider

CHAT = "manifests/deployments/support-chat.yaml"


def cli(repo: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    r = run_cli(["--repo", str(repo), *args], env=env)
    return r.code, r.out, r.err


def set_temperature(repo: Path, value: str, old: str) -> str:
    p = repo / CHAT
    text = p.read_text()
    assert f"temperature: {old}" in text
    p.write_text(text.replace(f"temperature: {old}", f"temperature: {value}", 1))
    return commit_all(repo, f"temperature {value}")


def live_temperature(repo: Path) -> float:
    local = LocalProvider(
        ProviderConfig(name="local", type="local", environment="dev"), repo_root=repo, env={}
    )
    try:
        live = local.read("Deployment", "support-chat", "dev", None)
    finally:
        local.close()
    assert live is not None
    return float(live.body["options"]["temperature"])


def history(repo: Path) -> list[dict]:
    code, out, err = cli(repo, "history", "--json", "--env", "dev")
    assert code == 0, err
    return json.loads(out)


def test_apply_rollback_apply_restores_and_links(example_repo: Path) -> None:
    assert cli(example_repo, "apply", "--env", "dev")[0] == 0
    set_temperature(example_repo, "0.3", "0.2")  # A
    assert cli(example_repo, "apply", "--env", "dev")[0] == 0
    b = set_temperature(example_repo, "0.9", "0.3")  # B
    assert cli(example_repo, "apply", "--env", "dev")[0] == 0
    assert live_temperature(example_repo) == 0.9
    b_run = history(example_repo)[0]["id"]

    code, out, err = cli(example_repo, "rollback", b[:10])
    assert code == 0, err
    assert "reverts " + b[:12] in out
    assert git(example_repo, "log", "-1", "--format=%s") == 'Revert "temperature 0.9"'
    assert f"Rollback-Of: {b}" in git(example_repo, "log", "-1", "--format=%B")

    code, out, err = cli(example_repo, "apply", "--env", "dev")
    assert code == 0, out + err
    assert live_temperature(example_repo) == 0.3
    latest = history(example_repo)[0]
    assert latest["trigger"] == "rollback"
    assert latest["reverted_commits"] == [b] and latest["reverted_runs"] == [b_run]
    code, out, _ = cli(example_repo, "history", "--env", "dev")
    assert f"rolls back {b[:7]} (applied by {b_run})" in out


def test_hand_made_git_revert_is_recognised(example_repo: Path) -> None:
    assert cli(example_repo, "apply", "--env", "dev")[0] == 0
    b = set_temperature(example_repo, "0.7", "0.2")
    assert cli(example_repo, "apply", "--env", "dev")[0] == 0
    git(example_repo, "revert", "--no-edit", b)
    assert cli(example_repo, "apply", "--env", "dev")[0] == 0
    assert live_temperature(example_repo) == 0.2
    latest = history(example_repo)[0]
    assert latest["trigger"] == "rollback" and latest["reverted_commits"] == [b]


def test_rollback_to_reverts_every_later_manifest_commit(example_repo: Path) -> None:
    assert cli(example_repo, "apply", "--env", "dev")[0] == 0
    good = git(example_repo, "rev-parse", "HEAD")
    set_temperature(example_repo, "0.4", "0.2")
    (example_repo / "notes.txt").write_text("not a manifest")
    commit_all(example_repo, "notes")
    set_temperature(example_repo, "0.5", "0.4")
    assert cli(example_repo, "apply", "--env", "dev")[0] == 0
    code, _out, err = cli(example_repo, "rollback", "--to", good[:8])
    assert code == 0, err
    assert git(example_repo, "log", "-1", "--format=%s") == "Revert 2 commits"
    assert (example_repo / "notes.txt").exists()
    assert cli(example_repo, "apply", "--env", "dev")[0] == 0
    assert live_temperature(example_repo) == 0.2


def test_conflicting_rollback_changes_nothing(example_repo: Path) -> None:
    b = set_temperature(example_repo, "0.4", "0.2")
    set_temperature(example_repo, "0.5", "0.4")
    head = git(example_repo, "rev-parse", "HEAD")
    code, _out, err = cli(example_repo, "rollback", b)
    assert code == 1
    assert "conflicts" in err and CHAT in err and "Traceback" not in err
    assert git(example_repo, "rev-parse", "HEAD") == head
    assert git(example_repo, "status", "--porcelain") == ""


def test_rollback_branch_push_and_pull_request(example_repo: Path, tmp_path: Path) -> None:
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(example_repo, "remote", "add", "origin", str(origin))
    (example_repo / "reconciler.yaml").write_text(
        "approvals: {source: github, repository: acme/manifests}\n"
    )
    commit_all(example_repo, "config")
    assert cli(example_repo, "apply", "--env", "dev")[0] == 0
    b = set_temperature(example_repo, "0.6", "0.2")
    assert cli(example_repo, "apply", "--env", "dev")[0] == 0
    git(example_repo, "push", "-q", "origin", "main")
    with FakeGitHub() as gh:
        env = {"GITHUB_TOKEN": gh.token, "GITHUB_API_URL": gh.url}
        code, out, err = cli(
            example_repo, "rollback", b, "--branch", "rollback-b", "--push", "--open-pr", env=env
        )
        assert code == 0, err
        assert "pull request #1" in out
        pr = gh.pulls[1]
        assert pr["head"]["ref"] == "rollback-b" and pr["base"]["ref"] == "main"
        assert pr["title"] == 'Revert "temperature 0.6"'
        assert b[:12] in pr["body"] and "run `" in pr["body"]
        assert gh.token not in out + err
    assert git(origin, "rev-parse", "refs/heads/rollback-b") == git(
        example_repo, "rev-parse", "rollback-b"
    )
    assert git(example_repo, "branch", "--show-current") == "main"
