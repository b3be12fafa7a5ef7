"""Checks after apply, through the CLI as a real process with the local provider (it
answers by rendering the prompt template): a passing and a failing check, and a failed
check rolled back."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import commit_all
from fakes.deploy_api import FakeDeployApi
from run_world import TOKEN, as_json, cli, make_repo


def check_yaml(*, contains: str = "briefly", on_fail: str = "fail") -> str:
    return (
        "apiVersion: reconciler/v1\nkind: Check\nmetadata: {name: smoke}\nspec:\n"
        "  deployment: chat\n  environments: [dev]\n"
        f"  onFail: {on_fail}\n"
        "  requests:\n"
        "    - input: {question: 'refund?'}\n"
        "      expect:\n"
        f"        contains: [{contains}]\n"
        "        notContains: [as an AI]\n"
        "        regex: ^Answer\n"
        "        latencyMsMax: 60000\n"
        "        costMax: 1\n"
        "    - input: {}\n      expect: {succeeded: false}\n"
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    with FakeDeployApi(token=TOKEN) as api:
        yield make_repo(tmp_path / "repo", api.url)


def set_prompt(repo: Path, text: str, version: str = "1.1.0") -> None:
    prompts = repo / "manifests" / "prompts.yaml"
    prompts.write_text(
        prompts.read_text()
        + f"    - {{version: {version}, template: '{text}: {{{{question}}}}'}}\n"
    )
    deps = repo / "manifests" / "deployments.yaml"
    deps.write_text(deps.read_text().replace("answer@1.0.0", f"answer@{version}"))


def checks(repo: Path) -> list[dict[str, object]]:
    found = as_json(cli(repo, "executions", "--env", "dev", "--json"))
    return [e for e in found if e["trigger"] == "check"]


def test_a_passing_check_after_apply_is_recorded_with_measured_values(repo: Path) -> None:
    (repo / "manifests" / "checks.yaml").write_text(check_yaml())
    commit_all(repo, "a check")
    r = cli(repo, "apply", "--env", "dev")
    assert r.code == 0, r.out + r.err
    done = checks(repo)
    assert [(e["check"], e["passed"]) for e in done] == [("smoke", True), ("smoke", True)]
    first = next(e for e in done if e["status"] == "completed")
    assert first["digest"].startswith("sha256:")
    measured = {x["name"]: x["measured"] for x in first["expectations"]}
    assert measured["contains"] == "Answer briefly: refund?"
    assert measured["costMax"] == pytest.approx(3 * 2.5e-6 + 3 * 10e-6)
    assert isinstance(measured["latencyMsMax"], float)
    # an apply that changes nothing runs no check
    assert cli(repo, "apply", "--env", "dev").code == 0
    assert len(checks(repo)) == 2


def test_a_failing_check_fails_the_run_and_says_what_was_measured(repo: Path) -> None:
    (repo / "manifests" / "checks.yaml").write_text(check_yaml(contains="refund-policy"))
    commit_all(repo, "a check that cannot pass")
    r = cli(repo, "apply", "--env", "dev")
    assert r.code == 1
    assert "checks failed" in r.out + r.err and "refund-policy" in r.out + r.err
    runs = as_json(cli(repo, "history", "--env", "dev", "--json"))
    assert runs[0]["outcome"] == "failed"
    failed = [e for e in checks(repo) if e["passed"] is False]
    assert len(failed) == 1 and failed[0]["status"] == "completed"
    # the failing spec stays applied: onFail is `fail`
    shown = as_json(cli(repo, "status", "--env", "dev", "--json"))
    assert [s["name"] for s in shown] == ["chat"]


def test_on_fail_rollback_restores_the_previous_spec(repo: Path) -> None:
    (repo / "manifests" / "checks.yaml").write_text(check_yaml(on_fail="rollback"))
    commit_all(repo, "a check")
    assert cli(repo, "apply", "--env", "dev").code == 0
    set_prompt(repo, "Ramble on")
    commit_all(repo, "a prompt that fails its check")
    r = cli(repo, "apply", "--env", "dev")
    assert r.code == 1, r.out + r.err
    assert "checks failed" in r.out and "Ramble on" in r.out
    assert "restored 1 change(s) (a check's onFail: rollback)" in r.out
    runs = as_json(cli(repo, "history", "--env", "dev", "--json"))
    assert runs[0]["outcome"] == "failed"
    assert runs[0]["details"]["rolled_back"] == ["deployment.chat"]
    ran = cli(repo, "run", "chat", "--env", "dev", "--input", '{"question": "q"}')
    assert ran.code == 0 and "Answer briefly: q" in ran.out and "Ramble" not in ran.out


def test_a_check_naming_an_unknown_deployment_is_a_located_error(repo: Path) -> None:
    (repo / "manifests" / "checks.yaml").write_text(
        check_yaml().replace("deployment: chat", "deployment: chta")
    )
    commit_all(repo, "a typo")
    r = cli(repo, "validate")
    assert r.code != 0
    assert "manifests/checks.yaml:5:" in r.err and "unknown deployment 'chta'" in r.err
    assert "did you mean 'chat'" in r.err


def test_a_failed_call_says_why_in_the_run(repo: Path) -> None:
    (repo / "manifests" / "checks.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Check\nmetadata: {name: smoke}\nspec:\n"
        "  deployment: chat\n  environments: [dev]\n  requests:\n    - input: {}\n"
    )
    commit_all(repo, "a check whose call fails")
    r = cli(repo, "apply", "--env", "dev")
    assert r.code == 1
    assert "succeeded: expected True, measured False" in r.out and "needs question" in r.out
