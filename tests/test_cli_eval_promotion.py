"""Eval runs as promotion evidence through the CLI (the local provider answers by
rendering the prompt): production requires the `quality` eval's latest run in staging
on the exact digest, with the eval of record; a pull request's run is advisory and
never counted; a changed eval is a policy change whose old bar still holds."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import commit_all, pull_request_event, squash_to_root, write_files
from promotion_world import as_json, cli, make_repo

PROMOTED = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: staging}
---
apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
spec:
  promotion:
    from: staging
    requires: {checks: false, evals: [quality]}
"""
EVAL = """apiVersion: reconciler/v1
kind: Eval
metadata: {name: quality}
spec:
  deployment: chat
  environments: [staging]
  dataset: evals/golden.jsonl
  repeat: 2
  minPassRate: %s
"""


def dataset(*contains: str) -> str:
    return "".join(
        json.dumps({"input": {"question": f"q{i}"}, "expect": {"contains": [text]}}) + "\n"
        for i, text in enumerate(contains)
    )


def world(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "repo")
    (repo / "manifests" / "checks.yaml").unlink()
    write_files(
        repo,
        {
            "manifests/environments.yaml": PROMOTED,
            "manifests/evals.yaml": EVAL % "0.9",
            "evals/golden.jsonl": dataset("briefly", "briefly", "Answer"),
        },
    )
    # one commit: the environments' first declaration is their policy (nothing applied)
    squash_to_root(repo, "production takes what passed the quality eval in staging")
    assert cli(repo, "apply", "--env", "staging").code == 0
    return repo


def test_production_waits_for_a_passing_eval_run_in_staging_not_a_pull_request_s(
    tmp_path: Path,
) -> None:
    repo = world(tmp_path)
    blocked = cli(repo, "apply", "--env", "production")
    assert blocked.code == 3, blocked.out + blocked.err
    assert "deployment.chat (" in blocked.out + blocked.err
    assert "has no run of eval 'quality' (as of record" in blocked.out + blocked.err

    advisory = cli(repo, "eval", "quality", "--env", "staging", env=pull_request_event(tmp_path))
    assert advisory.code == 0 and "advisory: run for a pull request" in advisory.out
    assert cli(repo, "apply", "--env", "production").code == 3  # never counted

    trusted = as_json(cli(repo, "eval", "quality", "--env", "staging", "--json"))
    assert (trusted["outcome"], trusted["calls"], trusted["advisory"]) == ("passed", 6, False)
    applied = cli(repo, "apply", "--env", "production")
    assert applied.code == 0, applied.out + applied.err
    shown = as_json(cli(repo, "executions", "--env", "staging", "--json"))
    advisory_runs = {e["eval_run"] for e in shown if e["advisory"]}
    trusted_runs = {e["eval_run"] for e in shown if not e["advisory"]}
    assert len(advisory_runs) == 1 and trusted_runs == {trusted["evalRun"]}
    assert len(shown) == 12


def test_a_change_lowering_the_bar_is_still_held_to_the_bar_of_record(tmp_path: Path) -> None:
    repo = world(tmp_path)
    assert cli(repo, "eval", "quality", "--env", "staging").code == 0
    assert cli(repo, "apply", "--env", "production").code == 0
    # a new prompt whose answers fail one case in three, with the bar lowered to match
    write_files(
        repo,
        {
            "manifests/evals.yaml": EVAL % "0.5",
            "manifests/deployments.yaml": (repo / "manifests" / "deployments.yaml")
            .read_text()
            .replace("answer@1.0.0", "answer@1.1.0"),
            "evals/golden.jsonl": dataset("kindly", "kindly", "rudely"),
        },
    )
    commit_all(repo, "a kinder prompt, and a bar it clears")
    assert cli(repo, "apply", "--env", "staging").code == 0
    lowered = as_json(cli(repo, "eval", "quality", "--env", "staging", "--json"))
    assert (lowered["outcome"], lowered["passRate"]) == ("passed", 4 / 6)
    r = cli(repo, "apply", "--env", "production")
    assert r.code == 3
    # the eval of record (its cases and its bar) has no run on the new prompt's digest;
    # the change's own policy (the lowered eval) is satisfied, and says nothing
    (reason,) = [line for line in r.out.splitlines() if "promotion from staging" in line]
    assert "(policy of run " in reason, r.out
    assert "has no run of eval 'quality' (as of record" in reason
