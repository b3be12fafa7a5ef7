"""After a check fails and `onFail: rollback` restores the previous spec, git still
declares the failed one: apply in CI on the deploy branch opens the pull request that
reverts the commit which brought it, against the loopback GitHub stand-in, through the
CLI as a real process. Without a forge (or with --no-revert-pr) it says what to run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import commit_all, git
from fakes.deploy_api import FakeDeployApi
from fakes.forge import FakeGitHub
from run_world import TOKEN, cli, make_repo
from test_cli_checks import check_yaml, set_prompt


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    with FakeDeployApi(token=TOKEN) as api:
        repo = make_repo(tmp_path / "repo", api.url)
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    # the second request echoes a secret value: the measured answer carries it
    check = check_yaml(on_fail="rollback").replace(
        "    - input: {}\n      expect: {succeeded: false}\n",
        f"    - input: {{question: '{TOKEN}'}}\n      expect: {{contains: [briefly]}}\n",
    )
    (repo / "manifests" / "checks.yaml").write_text(check)
    return repo


def with_forge(repo: Path) -> None:
    (repo / "reconciler.yaml").write_text(
        "approvals: {source: github, repository: acme/manifests}\n"
    )


def in_ci(repo: Path, gh: FakeGitHub | None = None) -> dict[str, str]:
    """A GitHub Actions job of a push to main at HEAD."""
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_SHA": git(repo, "rev-parse", "HEAD"),
        "GITHUB_REF_NAME": "main",
        "GITHUB_REF_TYPE": "branch",
    }
    if gh is not None:
        env |= {"GITHUB_TOKEN": gh.token, "GITHUB_API_URL": gh.url}
    return env


def break_it(repo: Path) -> str:
    set_prompt(repo, "Ramble on")
    return commit_all(repo, "a prompt that fails its check")


def test_a_rolled_back_check_in_ci_opens_the_revert_pull_request(
    repo: Path, tmp_path: Path
) -> None:
    with_forge(repo)
    commit_all(repo, "a check that rolls back")
    with FakeGitHub() as gh:
        good = cli(repo, "apply", "--env", "dev", env=in_ci(repo, gh))
        assert good.code == 0, good.out + good.err
        bad = break_it(repo)
        summary = tmp_path / "summary.md"
        env = in_ci(repo, gh) | {"GITHUB_STEP_SUMMARY": str(summary)}
        r = cli(repo, "apply", "--env", "dev", env=env)
        assert r.code == 1, r.out + r.err
        assert "restored 1 change(s) (a check's onFail: rollback)" in r.out
        branch = f"reconciler/revert-dev-{bad[:12]}"
        assert f"revert pull request #1 ({branch}, reverts {bad[:12]}): " in r.out
        assert TOKEN not in r.out + r.err and gh.token not in r.out + r.err
        (pr,) = gh.pulls.values()
        assert pr["state"] == "open"
        assert pr["head"]["ref"] == branch and pr["base"]["ref"] == "main"
        assert pr["title"] == 'Revert "a prompt that fails its check"'
        body = pr["body"]
        assert "A check failed after apply in **dev**" in body
        assert "check smoke request 1" in body and "Ramble on: refund?" in body
        assert f"`{bad[:12]}` a prompt that fails its check" in body
        assert TOKEN not in body and "check smoke request 2" in body
        assert "revert pull request [#1](" in summary.read_text()
        # main is untouched (the revert is a proposal, reviewed like any change);
        # merged, git declares what dev runs again: nothing to apply
        assert git(repo, "rev-parse", "main") == bad
        git(repo, "merge", "-q", "--ff-only", branch)
        converged = cli(repo, "apply", "--env", "dev", env=in_ci(repo, gh))
        assert converged.code == 0 and "dev: no changes" in converged.out, converged.out

    # the spec is restored: the deployment answers as before the failed change
    ran = cli(repo, "run", "chat", "--env", "dev", "--input", '{"question": "q"}')
    assert ran.code == 0 and "Answer briefly: q" in ran.out
    # the pull request's head, pushed: the revert `reconciler rollback` builds
    origin = tmp_path / "origin.git"
    head = git(origin, "rev-parse", f"refs/heads/{branch}")
    assert git(origin, "rev-parse", f"{head}^") == bad
    assert f"Rollback-Of: {bad}" in git(origin, "log", "-1", "--format=%B", head)
    assert git(origin, "rev-parse", f"{head}^{{tree}}") == git(
        repo, "rev-parse", f"{bad}~1^{{tree}}"
    )


def test_without_a_forge_or_with_no_revert_pr_it_says_what_to_run(repo: Path) -> None:
    commit_all(repo, "a check that rolls back")
    assert cli(repo, "apply", "--env", "dev", env=in_ci(repo)).code == 0
    bad = break_it(repo)
    r = cli(repo, "apply", "--env", "dev", env=in_ci(repo))
    assert r.code == 1, r.out + r.err
    assert "no revert pull request (a revert pull request needs approvals.source" in r.out
    branch = f"reconciler/revert-dev-{bad[:12]}"
    assert f"next: reconciler rollback {bad[:12]} --branch {branch} --open-pr" in r.out
    assert branch not in git(repo, "branch", "--list")

    with_forge(repo)
    bad = commit_all(repo, "a forge, with the failing prompt still declared")
    with FakeGitHub() as gh:
        r = cli(repo, "apply", "--env", "dev", "--no-revert-pr", env=in_ci(repo, gh))
        assert r.code == 1, r.out + r.err
        assert gh.pulls == {}
    assert "no revert pull request (not in CI on the deploy branch (or --no-revert-pr))" in r.out
    # the commits since the last applied one that touch what apply reads, newest first
    assert f"next: reconciler rollback {bad[:12]} " in r.out


def test_without_a_git_identity_the_revert_is_committed_as_reconciler(
    repo: Path, tmp_path: Path
) -> None:
    """A CI runner often has no user.name: the revert is still made (as reconciler's
    state commits are), not an internal error ending the apply."""
    with_forge(repo)
    commit_all(repo, "a check that rolls back")
    with FakeGitHub() as gh:
        assert cli(repo, "apply", "--env", "dev", env=in_ci(repo, gh)).code == 0
        bad = break_it(repo)
        for key in ("user.name", "user.email"):
            git(repo, "config", "--unset", key)
        git(repo, "config", "user.useConfigOnly", "true")
        nobody = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
        r = cli(repo, "apply", "--env", "dev", env=in_ci(repo, gh) | nobody)
        assert r.code == 1 and "Traceback" not in r.err and "internal error" not in r.err
        assert "revert pull request #1 (" in r.out, r.out + r.err
    branch = f"reconciler/revert-dev-{bad[:12]}"
    head = git(tmp_path / "origin.git", "rev-parse", f"refs/heads/{branch}")
    author = git(tmp_path / "origin.git", "log", "-1", "--format=%an <%ae>", head)
    assert author == "reconciler <reconciler@localhost>"
