"""What a newcomer meets first, through the CLI: a wrong folder is an error that points
at `init`; `init` gives a protected production that an approval recorded with
`reconciler approve` reaches; approvals explain both policies when a change alters
one; logs, global options and history read as a person expects."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
from conftest import commit_all, git, init_repo, run_cli
from dashboard_server import start

from reconciler.config import load_settings
from reconciler.state import open_state
from reconciler.state.base import RunRecord


def cli(repo: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    r = run_cli(["--repo", str(repo), *args], env=env)
    assert "Traceback" not in r.err, r.err
    return r.code, r.out, r.err


def scaffold(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """`init --approvals file` in a git repo with one commit; the approvals file beside
    the repo (outside it, where the gate trusts it)."""
    repo = init_repo(tmp_path / "my-manifests")
    r = run_cli(["init", str(repo), "--approvals", "file"])
    assert r.code == 0, r.err
    commit_all(repo, "reconciler init")
    return repo, {"RECONCILER_APPROVALS_FILE": str(tmp_path / "approvals.json")}


def merge_branch(repo: Path, name: str, *edits: tuple[str, str, str]) -> str:
    """A branch with one commit (`edits`: file, old, new) merged with --no-ff."""
    git(repo, "checkout", "-q", "-b", name)
    for rel, old, new in edits:
        path = repo / rel
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))
    commit_all(repo, f"{name}: change")
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", f"Merge {name}", name)
    return git(repo, "rev-parse", "HEAD")


# -- 1: the wrong folder --------------------------------------------------------------


def test_a_folder_without_manifests_is_an_error_that_points_at_init(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-repo"
    empty.mkdir()
    for command in ("validate", "plan", "apply"):
        code, out, err = cli(empty, command)
        assert code == 1, (command, out, err)
        assert "no manifests" in err and "reconciler init" in err, err
    assert list(empty.iterdir()) == []  # nothing created: no .reconciler/


# -- 3: both policies, consistently ---------------------------------------------------


def test_approvals_explains_both_policies_when_a_change_adds_a_requirement(
    tmp_path: Path,
) -> None:
    repo, env = scaffold(tmp_path)
    assert cli(repo, "apply", "--env", "dev", env=env)[0] == 0
    merge_branch(
        repo,
        "guard-dev",
        (
            "manifests/environments.yaml",
            "  description: Where every merge lands first; no approvals needed\n",
            "  description: Where every merge lands first\n"
            "  approvals: {required: 1, approvers: [carol]}\n",
        ),
        ("manifests/deployments.yaml", "maxTokens: 300", "maxTokens: 400"),
    )
    code, out, err = cli(repo, "approve", "--pr", "1", "--reviewer", "bob", env=env)
    assert code == 0, err
    code, out, _ = cli(repo, "approvals", "--env", "dev", env=env)
    assert code == 3, out
    assert out.startswith("dev: BLOCKED:"), out
    record = out.index("Under the policy of record:")
    new = out.index("Under the policy this change sets:")
    assert "Required: 0 approvals" in out[record:new] and "Passed." in out[record:new]
    assert "Required: 1 approval" in out[new:] and "Blocked: 1 more approval needed" in out[new:]
    code, out, _ = cli(repo, "approvals", "--env", "dev", "--json", env=env)
    assert json.loads(out)["passed"] is False


# -- 4: init -> dev -> production through an approval ----------------------------------


def test_init_reaches_a_protected_production_through_a_recorded_approval(
    tmp_path: Path,
) -> None:
    repo, env = scaffold(tmp_path)
    code, out, _ = cli(repo, "validate")
    assert code == 0 and "(dev, production)" in out, out
    assert cli(repo, "apply", "--env", "dev", env=env)[0] == 0
    merge = merge_branch(
        repo, "longer-answers", ("manifests/deployments.yaml", "maxTokens: 300", "maxTokens: 500")
    )
    head = git(repo, "rev-parse", "HEAD^2")
    assert cli(repo, "apply", "--env", "production", env=env)[0] == 3

    code, _, err = cli(repo, "approve", "--pr", "2", "--reviewer", "Dev", env=env)
    assert code == 1 and "never counts" in err  # the author cannot approve
    assert not (tmp_path / "approvals.json").exists()
    inside = {"RECONCILER_APPROVALS_FILE": str(repo / "approvals.json")}
    code, _, err = cli(repo, "approve", "--pr", "2", "--reviewer", "bob", env=inside)
    assert code == 1 and "inside the manifests repo" in err

    # the first commit declared production and was pushed: it needs an entry too
    first = git(repo, "rev-list", "--max-parents=0", "HEAD")
    code, out, err = cli(
        repo, "approve", "--pr", "1", "--reviewer", "bob", "--commit", first, env=env
    )
    assert code == 0, err
    code, out, err = cli(repo, "approve", "--pr", "2", "--reviewer", "bob", env=env)
    assert code == 0, err
    assert "bob approved pull request #2" in out and str(tmp_path / "approvals.json") in out
    doc = json.loads((tmp_path / "approvals.json").read_text())
    assert doc["pullRequests"][0]["mergeCommitSha"] == first
    pr = doc["pullRequests"][1]
    assert (pr["headSha"], pr["mergeCommitSha"], pr["baseRef"]) == (head, merge, "main")
    assert pr["commits"] == [
        {
            "sha": head,
            "author": "Dev",
            "authorEmail": "dev@example.com",
            "committer": "Dev",
            "committerEmail": "dev@example.com",
        }
    ]
    assert pr["commitsComplete"] is True
    review = pr["reviews"][0]
    assert review["commitId"] == head and datetime.fromisoformat(review["submittedAt"]).tzinfo

    code, out, _ = cli(repo, "approvals", "--env", "production", env=env)
    assert code == 0 and "approved: 1/1 approvals (#2): bob" in out, out
    code, out, err = cli(repo, "apply", "--env", "production", env=env)
    assert code == 0, out + err
    run = json.loads(cli(repo, "history", "--env", "production", "--json")[1])[0]
    assert run["commit"] == merge and run["pull_request"] == 2 and run["approvers"] == ["bob"]


# -- 5: logs ----------------------------------------------------------------------------


def test_logs_are_human_lines_in_a_pipe_and_json_only_in_ci_or_when_asked(
    tmp_path: Path,
) -> None:
    repo, env = scaffold(tmp_path)
    code, _, err = cli(repo, "apply", "--env", "dev", env=env)  # stderr is a pipe
    assert code == 0
    change = next(line for line in err.splitlines() if " change " in line)
    assert not change.startswith("{") and "outcome=applied" in change
    assert "error=None" not in err and "=None" not in err

    merge_branch(repo, "b", ("manifests/deployments.yaml", "maxTokens: 300", "maxTokens: 400"))
    code, _, err = cli(repo, "apply", "--env", "dev", env={**env, "CI": "true"})
    assert code == 0
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    change_doc = next(d for d in lines if d["event"] == "change")
    assert change_doc["outcome"] == "applied" and "error" not in change_doc


# -- 6: global options after the command; --env for approvals ----------------------------


def test_global_options_are_accepted_after_the_command(tmp_path: Path) -> None:
    repo, env = scaffold(tmp_path)
    r = run_cli(["apply", "--repo", str(repo), "--env", "dev", "-q"], env=env)
    assert r.code == 0, r.err
    r = run_cli(["history", "--env", "dev", f"--repo={repo}"])
    assert r.code == 0 and "dev" in r.out, r.err
    r = run_cli(["approvals", "--env", "dev", "--repo", str(repo)], env=env)
    assert r.code == 0 and "no environment has changes" in r.out, r.out + r.err
    r = run_cli(["approvals", "--env", "production", "--repo", str(repo)], env=env)
    assert r.code == 3 and r.out.startswith("production: BLOCKED"), r.out + r.err
    r = run_cli(["approvals", "--env", "nowhere", "--repo", str(repo)], env=env)
    assert r.code == 1 and "unknown environment 'nowhere'" in r.err


# -- 7: history --------------------------------------------------------------------------


def test_history_has_a_header_readable_counts_and_who_applied(tmp_path: Path) -> None:
    repo, env = scaffold(tmp_path)
    assert cli(repo, "apply", "--env", "dev", env=env)[0] == 0  # locally: the git identity
    merge_branch(repo, "b", ("manifests/deployments.yaml", "maxTokens: 300", "maxTokens: 400"))
    ci = {**env, "GITHUB_ACTIONS": "true", "GITHUB_ACTOR": "octocat"}
    assert cli(repo, "apply", "--env", "dev", env=ci)[0] == 0  # in CI: the forge's actor
    settings = load_settings(repo)
    store = open_state(settings.state_url, repo_root=repo, env={})
    try:  # a run recorded before runs named who applied them
        at = datetime(2026, 1, 1, tzinfo=UTC)
        store.begin_run(
            RunRecord("20260101T000000Z-old000", "dev", None, "apply", at, None, "running")
        )
        store.finish_run("20260101T000000Z-old000", "applied")
    finally:
        store.close()

    code, out, _ = cli(repo, "history", "--env", "dev")
    assert code == 0
    header, newest, _, older, _, oldest = out.splitlines()[:6]
    assert header.split() == [
        "RUN",
        "ENVIRONMENT",
        "TRIGGER",
        "OUTCOME",
        "COMMIT",
        "APPLIED",
        "BY",
        "CHANGES",
    ]
    assert "octocat" in newest and newest.endswith("1 updated")
    assert "Dev <dev@example.com>" in older and older.endswith("1 created")
    assert oldest.split()[-4:] == ["—", "—", "no", "changes"]
    rows = json.loads(cli(repo, "history", "--env", "dev", "--json")[1])
    assert [r["applied_by"] for r in rows] == ["octocat", "Dev <dev@example.com>", None]


# -- 9: the dashboard, over HTTP (the browser tests look at it too) ----------------------

TOKEN = "newcomer-dashboard-token-77"


def test_login_is_rate_limited_and_its_cookie_expires(tmp_path: Path) -> None:
    repo, env = scaffold(tmp_path)
    server = start(repo, {**env, "RECONCILER_DASHBOARD_TOKEN": TOKEN}, "--refresh", "1h")
    try:
        url = server.url + "login"
        ok = httpx.post(url, data={"token": TOKEN, "next": "/"})
        assert ok.status_code == 303
        cookie = ok.headers["set-cookie"]
        assert "Max-Age=43200" in cookie, cookie  # a sign-in lasts 12 hours
        for _ in range(5):
            assert httpx.post(url, data={"token": "guess"}).status_code == 401
        late = httpx.post(url, data={"token": TOKEN})  # even the right one, for a while
        assert late.status_code == 429 and "Too many wrong tokens" in late.text
        assert 0 < int(late.headers["retry-after"]) <= 60
    finally:
        assert TOKEN not in server.stop()


def test_favicon_and_matrix_highlights_mean_one_thing(tmp_path: Path) -> None:
    """Only dev is applied: production's cells are "not deployed", which the matrix says
    in words; the highlight is kept for a deployed version that differs."""
    repo, env = scaffold(tmp_path)
    assert cli(repo, "apply", "--env", "dev", env=env)[0] == 0
    merge_branch(repo, "b", ("manifests/deployments.yaml", "maxTokens: 300", "maxTokens: 400"))
    server = start(repo, env, "--refresh", "1h")
    try:
        icon = server.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
        assert '<link rel="icon" href="/favicon.ico"' in server.get("/").text
        page = server.get("/matrix").text
    finally:
        server.stop()
    cells = re.findall(r'<td class="([^"]*)" data-env="(\w+)" data-deployment="hello-chat">', page)
    classes = dict((env_, cls.split()) for cls, env_ in cells)
    assert "differs" not in classes["production"] and "pending" in classes["production"]
    assert "differs" not in classes["dev"]
