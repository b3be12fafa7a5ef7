"""The approval gate through the CLI, against a GitHub-shaped server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import commit_all, git, run_cli, squash_to_root
from fakes.forge import FakeGitHub

from reconciler.forge import PLAN_COMMENT_MARKER, github
from reconciler.forge.api import DEFAULT_MAX_RETRIES


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub() as server:
        yield server


@pytest.fixture
def repo(example_repo: Path, gh: FakeGitHub) -> Path:
    """The example with production on the local provider (its vendor deployments left
    out) and without its deploy window."""
    providers = example_repo / "manifests/providers.yaml"
    text = providers.read_text()
    http = text[text.index("  type: http") : text.index("  models:", text.index("  type: http"))]
    text = text.replace(http, "  type: local\n  environments: [production]\n")
    assert "type: http" not in text
    providers.write_text(text)
    envs = example_repo / "manifests/environments.yaml"
    text = envs.read_text()
    start = text.index("  windows:")
    envs.write_text(text[:start] + text[text.index("  allowOverride"):])  # fmt: skip
    (example_repo / "reconciler.yaml").write_text(
        "approvals: {source: github, repository: acme/manifests}\n"
    )
    (example_repo / "manifests/deployments/hosted.yaml").unlink()  # the vendors' deployments
    gh.adopt(squash_to_root(example_repo, "test setup"), approve=("alice", "bob"))
    return example_repo


def merge_pr(repo: Path, gh: FakeGitHub, number: int, author: str = "dave") -> tuple[str, str]:
    """A topic branch changing support-chat, merged with --no-ff; returns (head, merge)."""
    git(repo, "checkout", "-q", "-b", f"topic-{number}")
    chat = repo / "manifests/deployments/support-chat.yaml"
    chat.write_text(chat.read_text().replace("maxTokens: 400", f"maxTokens: {400 + number}"))
    head = commit_all(repo, f"change {number}")
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", f"Merge pull request #{number}", f"topic-{number}")
    merge = git(repo, "rev-parse", "HEAD")
    gh.add_pull_request(number, author=author, head_sha=head, merge_commit_sha=merge)
    gh.add_commit(number, head, author=author)
    return head, merge


def cli(repo: Path, gh: FakeGitHub, *args: str) -> tuple[int, str]:
    env = {"GITHUB_TOKEN": gh.token, "GITHUB_API_URL": gh.url}
    r = run_cli(["--repo", str(repo), *args], env=env)
    out = r.out + r.err
    assert gh.token not in out, "the token leaked"
    assert "Traceback" not in out
    return r.code, out


def recorded(repo: Path) -> set[str]:
    r = run_cli(["--repo", str(repo), "status", "--json", "--env", "production"])
    return {row["name"] for row in json.loads(r.out)}


def test_unapproved_change_never_reaches_production(repo: Path, gh: FakeGitHub) -> None:
    merge_pr(repo, gh, 7)
    code, out = cli(repo, gh, "apply", "--env", "production")
    assert code == 3
    assert "needs 2" in out or "2 approvals" in out
    assert recorded(repo) == set()


def test_self_and_commit_author_approvals_do_not_count(repo: Path, gh: FakeGitHub) -> None:
    head, _ = merge_pr(repo, gh, 8)
    gh.add_commit(8, "c" * 40, author="erin")
    gh.add_review(8, "dave", "APPROVED", commit_id=head)
    gh.add_review(8, "erin", "APPROVED", commit_id=head)
    gh.add_review(8, "alice", "APPROVED", commit_id=head)
    code, out = cli(repo, gh, "approvals")
    assert code == 3
    assert "dave" in out and "erin" in out and "alice" in out
    code, _ = cli(repo, gh, "apply", "--env", "production")
    assert code == 3 and recorded(repo) == set()


def test_two_fresh_approvals_apply_and_are_recorded(repo: Path, gh: FakeGitHub) -> None:
    head, merge = merge_pr(repo, gh, 9)
    gh.add_review(9, "alice", "APPROVED", commit_id=head)
    gh.add_review(9, "bob", "APPROVED", commit_id=head)
    code, out = cli(repo, gh, "approvals", "--status")
    assert code == 0, out
    status = gh.statuses[-1]
    assert status["sha"] == head and status["context"] == "reconciler/approvals"
    assert status["state"] == "success" and len(status["description"]) <= 140
    code, out = cli(repo, gh, "apply", "--env", "production")
    assert code == 0, out
    assert "support-chat" in recorded(repo)
    r = run_cli(["--repo", str(repo), "history", "--json", "--env", "production"])
    run = json.loads(r.out)[0]
    assert run["commit"] == merge and run["pull_request"] == 9
    assert run["author"] == "dave" and sorted(run["approvers"]) == ["alice", "bob"]


def test_stale_and_withdrawn_approvals(repo: Path, gh: FakeGitHub) -> None:
    head, _ = merge_pr(repo, gh, 10)
    gh.add_review(10, "alice", "APPROVED", commit_id="0" * 40)  # an older head
    gh.add_review(10, "bob", "APPROVED", commit_id=head)
    gh.add_review(10, "bob", "CHANGES_REQUESTED", commit_id=head)
    code, _ = cli(repo, gh, "approvals", "--status")
    assert code == 3
    assert gh.statuses[-1]["state"] == "failure"
    assert len(gh.statuses[-1]["description"]) <= 140


def test_direct_push_is_refused(repo: Path, gh: FakeGitHub) -> None:
    chat = repo / "manifests/deployments/support-chat.yaml"
    chat.write_text(chat.read_text().replace("maxTokens: 400", "maxTokens: 401"))
    gh.link_commit(commit_all(repo, "pushed straight to main"))  # known to GitHub, no PR
    code, out = cli(repo, gh, "apply", "--env", "production")
    assert code == 3 and "direct push" in out


def test_forge_down_fails_closed(
    repo: Path, gh: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    head, _ = merge_pr(repo, gh, 11)
    gh.add_review(11, "alice", "APPROVED", commit_id=head)
    gh.add_review(11, "bob", "APPROVED", commit_id=head)
    gh.down = 503
    waits: list[float] = []

    class WaitsOnAFakeClock(github.GitHubSource):
        """The command's source, its backoff between retries recorded, not slept."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, sleep=waits.append, **kwargs)

    monkeypatch.setattr(github, "GitHubSource", WaitsOnAFakeClock)  # the command runs in-process
    code, out = cli(repo, gh, "apply", "--env", "production")
    assert code == 3 and "cannot read approvals" in out
    assert len(waits) == DEFAULT_MAX_RETRIES  # it retried with backoff, then gave up
    assert recorded(repo) == set()


def test_dev_and_staging_apply_while_production_waits(repo: Path, gh: FakeGitHub) -> None:
    merge_pr(repo, gh, 12)
    code, out = cli(repo, gh, "apply")
    assert code == 3
    assert "dev: applied" in out and "staging: applied" in out and "production: BLOCKED" in out


def test_plan_comment_is_posted_once_and_updated(repo: Path, gh: FakeGitHub) -> None:
    merge_pr(repo, gh, 13)
    for _ in range(2):
        code, out = cli(repo, gh, "plan", "--comment", "--pr", "13")
        assert code == 0, out
    comments = gh.comments[13]
    assert len(comments) == 1
    assert comments[0]["body"].count(PLAN_COMMENT_MARKER) == 1
    assert "support-chat" in comments[0]["body"]
