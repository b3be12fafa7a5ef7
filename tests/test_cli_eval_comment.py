"""An eval run for a pull request is posted to it, advisory, against a GitHub-shaped
server on 127.0.0.1: one comment per eval and environment, updated on each run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import commit_all, pull_request_event, run_cli, write_files
from fakes.forge import FakeGitHub
from promotion_world import make_repo

EVAL = """apiVersion: reconciler/v1
kind: Eval
metadata: {name: quality}
spec:
  deployment: chat
  environments: [staging]
  dataset: evals/golden.jsonl
  minPassRate: 0.5
"""


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub() as server:
        yield server


def test_a_pull_request_s_eval_is_posted_advisory_once(tmp_path: Path, gh: FakeGitHub) -> None:
    repo = make_repo(tmp_path / "repo")
    write_files(
        repo,
        {
            "reconciler.yaml": "approvals: {source: github, repository: acme/manifests}\n",
            "manifests/evals.yaml": EVAL,
            "evals/golden.jsonl": json.dumps(
                {"input": {"question": "refund?"}, "expect": {"contains": ["briefly"]}}
            )
            + "\n",
        },
    )
    commit_all(repo, "an eval")
    assert run_cli(["--repo", str(repo), "apply", "--env", "staging"]).code == 0
    env = {"GITHUB_TOKEN": gh.token, "GITHUB_API_URL": gh.url, **pull_request_event(tmp_path)}
    for _ in range(2):
        r = run_cli(
            ["--repo", str(repo), "eval", "quality", "--env", "staging", "--comment"], env=env
        )
        assert r.code == 0 and "eval posted to pull request #7" in r.err, r.out + r.err
        assert gh.token not in r.out + r.err
    (comment,) = gh.comments[7]
    body = comment["body"]
    assert body.startswith("<!-- reconciler eval quality staging -->")
    assert "Eval `quality` on `deployment.chat` in `staging`: passed" in body
    assert "| 1 | 1 | 1.000 | 0.5 | 1 |" in body
    assert "**Advisory**: run for this pull request" in body
