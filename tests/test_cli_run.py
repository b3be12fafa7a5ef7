"""`reconciler run`, `executions` and `state migrate` of executions, through the CLI as
a real process, against the local registry and the http stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import commit_all
from fakes.deploy_api import FakeDeployApi
from run_world import TOKEN, as_json, cli, make_repo, run_under_way

from reconciler.runs.model import INTERRUPTED


@pytest.fixture
def api() -> FakeDeployApi:
    with FakeDeployApi(token=TOKEN) as server:
        yield server


@pytest.fixture
def repo(tmp_path: Path, api: FakeDeployApi) -> Path:
    repo = make_repo(tmp_path / "repo", api.url)
    assert cli(repo, "apply").code == 0
    return repo


def test_local_run_renders_the_applied_prompt_and_is_recorded(repo: Path) -> None:
    r = cli(repo, "run", "chat", "--env", "dev", "--input", '{"question": "why?"}')
    assert r.code == 0, r.err
    assert "completed" in r.out and "Answer briefly: why?" in r.out
    assert "tokens 3 in / 3 out" in r.out
    listed = as_json(cli(repo, "executions", "--json"))
    assert [(e["deployment"], e["status"], e["trigger"]) for e in listed] == [
        ("chat", "completed", "manual")
    ]
    ex = listed[0]
    assert ex["result"] == "Answer briefly: why?" and ex["usage"]["input_tokens"] == 3
    assert ex["cost"] == pytest.approx(3 * 2.5e-6 + 3 * 10e-6) and ex["currency"] == "USD"
    shown = cli(repo, "executions", "show", ex["id"])
    assert shown.code == 0 and ex["applied_run"] in shown.out


def test_run_invokes_what_is_applied_never_the_working_tree(repo: Path) -> None:
    prompts = repo / "manifests" / "prompts.yaml"
    prompts.write_text(prompts.read_text().replace("Answer briefly", "Ramble"))
    commit_all(repo, "not applied yet")
    r = cli(repo, "run", "chat", "--env", "dev", "--input", '{"question": "why?"}')
    assert r.code == 0 and "Answer briefly: why?" in r.out and "Ramble" not in r.out


def test_a_failing_run_exits_1_and_is_recorded_failed(repo: Path) -> None:
    r = cli(repo, "run", "chat", "--env", "dev", "--input", '{"other": 1}')
    assert r.code == 1
    assert "failed" in r.out and "needs question" in r.out
    (ex,) = as_json(cli(repo, "executions", "--status", "failed", "--json"))
    assert ex["error"] and ex["result"] is None


def test_bad_input_and_unknown_deployments_are_one_line_errors(repo: Path) -> None:
    r = cli(repo, "run", "chat", "--env", "dev", "--input", "[1]")
    assert r.code == 1 and "must be a JSON object" in r.err
    r = cli(repo, "run", "nope", "--env", "dev")
    assert r.code == 1 and "deployment.nope is not applied in 'dev'" in r.err
    r = cli(repo, "executions", "show", "ex-unknown")
    assert r.code == 1 and "no execution 'ex-unknown'" in r.err
    r = cli(repo, "executions", "--since", "yesterday")
    assert r.code == 1 and "--since" in r.err
    assert as_json(cli(repo, "executions", "--json")) == []


def test_http_run_against_the_stand_in(repo: Path, api: FakeDeployApi, tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('{"question": "ping"}')
    r = cli(repo, "run", "chat", "--env", "prod", "--input-file", str(tmp_path / "in.json"))
    assert r.code == 0, r.err
    assert api.runs == [("prod", "chat", {"question": "ping"})]
    ex = as_json(cli(repo, "executions", "--env", "prod", "--json"))[0]
    assert ex["provider"] == "registry" and ex["usage"] == {"input_tokens": 2, "output_tokens": 7}
    assert '"echo": {"question": "ping"}' in ex["result"]


def test_http_run_failure_is_recorded(repo: Path, api: FakeDeployApi) -> None:
    api.tamper("deployments", "prod", "chat", runFails="model overloaded")
    r = cli(repo, "run", "chat", "--env", "prod")
    assert r.code == 1 and "model overloaded" in r.out
    assert as_json(cli(repo, "executions", "--json"))[0]["status"] == "failed"


def test_a_secret_echoed_by_the_model_is_redacted(repo: Path, api: FakeDeployApi) -> None:
    api.tamper("deployments", "prod", "chat", runOutput=f"the token is {TOKEN}, {{input.q}}")
    r = cli(repo, "run", "chat", "--env", "prod", "--input", '{"q": "ok"}', "--json")
    assert r.code == 0 and TOKEN not in r.out
    assert as_json(r)["result"].startswith("the token is ")
    for args in (["executions", "--json"], ["executions"]):
        assert TOKEN not in cli(repo, *args).out
    db = (repo / ".reconciler" / "state.db").read_bytes()
    assert TOKEN.encode() not in db


def test_a_large_result_is_capped(repo: Path, api: FakeDeployApi) -> None:
    (repo / "reconciler.yaml").write_text("executions: {maxResultBytes: 1000}\n")
    commit_all(repo, "cap")
    r = cli(repo, "run", "chat", "--env", "dev", "--input", '{"question": "' + "é" * 3000 + '"}')
    assert r.code == 0
    ex = as_json(cli(repo, "executions", "--json"))[0]
    assert ex["truncated"] and ex["result_bytes"] > 6000 and len(ex["result"].encode()) <= 1000
    assert len(ex["input"].encode()) <= 1000


def test_retention_keeps_the_newest(repo: Path) -> None:
    for _ in range(4):
        assert cli(repo, "run", "chat", "--env", "dev", "--input", '{"question": "x"}',
                   env={"RECONCILER_EXECUTIONS_KEEP": "2"}).code == 0  # fmt: skip
    assert len(as_json(cli(repo, "executions", "--json"))) == 2


@pytest.mark.slow  # a real process, killed
def test_kill_9_mid_execution_leaves_an_honest_record(repo: Path, api: FakeDeployApi) -> None:
    with run_under_way(repo, api):
        running = as_json(cli(repo, "executions", "--json"))
        assert [e["status"] for e in running] == ["running"]
    (ex,) = as_json(cli(repo, "executions", "--json"))
    assert ex["status"] == "failed" and ex["error"] == INTERRUPTED and ex["finished_at"]


@pytest.mark.parametrize("target", ["git", "postgres"])
def test_state_migrate_takes_the_executions(
    repo: Path, target: str, request: pytest.FixtureRequest
) -> None:
    assert cli(repo, "run", "chat", "--env", "dev", "--input", '{"question": "a"}').code == 0
    before = as_json(cli(repo, "executions", "--json"))
    url = (
        "git://refs/reconciler/state"
        if target == "git"
        else request.getfixturevalue("postgres_url")
    )
    r = cli(repo, "state", "migrate", "--to", url)
    assert r.code == 0 and "copied 1 execution" in r.out
    after = as_json(cli(repo, "--state", url, "executions", "--json"))
    assert after == before
    r = cli(repo, "state", "migrate", "--to", url)
    assert r.code == 1


def test_metrics_per_deployment_and_environment(repo: Path, api: FakeDeployApi) -> None:
    for q in ("a", "b b", "c c c"):
        assert (
            cli(repo, "run", "chat", "--env", "dev", "--input", f'{{"question": "{q}"}}').code == 0
        )
    assert cli(repo, "run", "chat", "--env", "dev", "--input", "{}").code == 1
    assert cli(repo, "run", "chat", "--env", "prod", "--input", '{"q": 1}').code == 0
    rows = {r["environment"]: r for r in as_json(cli(repo, "metrics", "--json"))}
    dev = rows["dev"]
    assert (dev["requests"], dev["completed"], dev["failed"]) == (4, 3, 1)
    assert dev["success_rate"] == 0.75
    assert dev["tokens"] == {"input": 3 + 4 + 5, "output": 3 + 4 + 5, "unreported_calls": 0}
    assert dev["cost"] == pytest.approx(12 * 2.5e-6 + 12 * 10e-6) and dev["currency"] == "USD"
    assert dev["latency_ms"]["p50"] <= dev["latency_ms"]["p95"] <= dev["latency_ms"]["p99"]
    assert rows["prod"]["requests"] == 1
    only = as_json(cli(repo, "metrics", "--env", "prod", "--json"))
    assert [r["environment"] for r in only] == ["prod"]
    out = cli(repo, "metrics").out
    assert "dev" in out and "75.0" in out and "USD" in out


def test_an_undeclared_price_is_unknown_never_zero(tmp_path: Path, api: FakeDeployApi) -> None:
    repo = make_repo(tmp_path / "plain", api.url, pricing=False)
    assert cli(repo, "apply", "--env", "dev").code == 0
    r = cli(repo, "run", "chat", "--env", "dev", "--input", '{"question": "x"}')
    assert "cost unknown (no price declared)" in r.out
    (row,) = as_json(cli(repo, "metrics", "--json"))
    assert row["cost"] is None and row["cost_unknown_calls"] == 1
    assert "unknown" in cli(repo, "metrics").out


def test_a_suspended_deployment_is_stopped_and_takes_no_runs(
    repo: Path, api: FakeDeployApi
) -> None:
    deployments = repo / "manifests" / "deployments.yaml"
    text = deployments.read_text()
    deployments.write_text(text.replace("prod: {provider: registry}",
                                        "prod: {provider: registry, suspended: true}\n"
                                        "    dev: {suspended: true}"))  # fmt: skip
    commit_all(repo, "suspend chat")
    r = cli(repo, "apply")
    assert r.code == 0, r.out + r.err
    assert api.get("deployments", "prod", "chat")["suspended"] is True  # type: ignore[index]
    status = cli(repo, "status").out
    assert status.count("Suspended") == 2, status
    for env in ("dev", "prod"):
        r = cli(repo, "run", "chat", "--env", env)
        assert r.code == 1 and f"deployment.chat is suspended in '{env}'" in r.err
    assert api.runs == [] and as_json(cli(repo, "executions", "--json")) == []


def test_the_dashboard_shows_executions_and_usage(repo: Path) -> None:
    from dashboard_server import start

    assert cli(repo, "run", "chat", "--env", "dev", "--input", '{"question": "a"}').code == 0
    assert cli(repo, "run", "chat", "--env", "dev", "--input", "{}").code == 1
    server = start(repo, {"REGISTRY_TOKEN": TOKEN}, "--refresh", "1s")
    try:
        page = server.get("/executions")
        assert page.status_code == 200 and page.text.count("data-execution=") == 2
        failed = server.get("/executions?env=dev&deployment=chat&status=failed")
        assert failed.text.count("data-execution=") == 1 and "needs question" in failed.text
        usage = server.get("/metrics")
        assert usage.status_code == 200 and "<svg" in usage.text and "<script" not in usage.text
        assert 'data-usage="dev/chat"' in usage.text and "success 50.0%" in usage.text
        assert [e["status"] for e in server.get("/api/executions").json()] == [
            "failed",
            "completed",
        ]
        (row,) = server.get("/api/metrics").json()
        assert row["requests"] == 2 and row["completed"] == 1
    finally:
        server.stop()
