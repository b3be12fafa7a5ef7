"""The promotion gate through the CLI as real processes on an injected clock
(libfaketime): production takes only what staging has applied, checked and soaked."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import commit_all
from promotion_world import as_json, at, cli, make_repo, needs_faketime

pytestmark = [needs_faketime, pytest.mark.slow]  # a process per command (libfaketime)


def test_blocked_while_soaking_then_eligible(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    first = cli(repo, "apply", env=at("2030-01-07 10:00:00"))
    assert first.code == 3, first.out + first.err
    assert "staging: applied" in first.out
    assert "production: BLOCKED: promotion from staging: deployment.chat is soaking in " in (
        first.out
    )
    assert "needs 2h00m (eligible at 2030-01-07T12:00:" in first.out
    assert "next: apply the same change to staging first" in first.out

    plan = cli(repo, "plan", "--env", "production", env=at("2030-01-07 11:00:00"))
    assert "promotion from staging: deployment.chat is soaking in staging" in plan.out, plan.out
    ahead = cli(repo, "plan", "--env", "production", "--json", env=at("2030-01-07 12:10:00"))
    (gate,) = [e["gate"] for e in as_json(ahead)["environments"]]
    assert gate["promotion"] == []
    assert "promotion: every deployment eligible" in gate["summary"]
    soon = cli(repo, "apply", "--env", "production", env=at("2030-01-07 11:00:00"))
    assert soon.code == 3 and "is soaking in staging" in soon.out

    later = cli(repo, "apply", "--env", "production", env=at("2030-01-07 12:30:00"))
    assert later.code == 0, later.out + later.err
    assert "production: applied" in later.out
    checks = [e for e in as_json(cli(repo, "executions", "--json")) if e["trigger"] == "check"]
    assert {(e["environment"], e["passed"]) for e in checks} == {
        ("staging", True),
        ("production", True),
    }
    # the same digest: staging's evidence is what production was let in by
    assert len({e["digest"] for e in checks}) == 1


def test_a_digest_staging_does_not_run_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    assert cli(repo, "apply", env=at("2030-01-07 10:00:00")).code == 3
    assert cli(repo, "apply", env=at("2030-01-07 12:30:00")).code == 0
    deps = repo / "manifests" / "deployments.yaml"
    deps.write_text(deps.read_text() + "  overrides:\n    production: {prompt: answer@1.1.0}\n")
    commit_all(repo, "production only: a prompt staging never ran")
    r = cli(repo, "apply", "--env", "production", env=at("2030-01-08 10:00:00"))
    assert r.code == 3
    assert "deployment.chat would run " in r.out and ", but staging runs " in r.out


def test_a_failed_check_in_staging_revokes_eligibility(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    prompts = repo / "manifests" / "prompts.yaml"
    prompts.write_text(prompts.read_text().replace("Answer briefly and kindly", "Ramble on"))
    deps = repo / "manifests" / "deployments.yaml"
    deps.write_text(deps.read_text().replace("answer@1.0.0", "answer@1.1.0"))
    commit_all(repo, "a prompt that fails its check")
    first = cli(repo, "apply", env=at("2030-01-07 10:00:00"))
    assert "staging: failed" in first.out
    r = cli(repo, "apply", "--env", "production", env=at("2030-01-08 10:00:00"))
    assert r.code == 3
    assert "deployment.chat failed 1 check request(s) in staging since it was applied" in r.out
