"""Every top-level command as users run it, `python -m reconciler`, once: its arguments
parsed, the command reached, its exit code and its output. The behaviour of each is
tested in-process elsewhere (`conftest.run_cli`); these prove the wiring a process
adds (the entry point, the exit status, the streams) stays intact."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Result, cli_environment, commit_all, init_repo, run_process, write_files
from dashboard_server import start

pytestmark = pytest.mark.slow  # a process per command, on purpose

FILES = {
    "manifests/env.yaml": """apiVersion: reconciler/v1
kind: Environment
metadata: {name: dev}
spec: {description: sandbox}
""",
    "manifests/provider.yaml": """apiVersion: reconciler/v1
kind: Provider
metadata: {name: local}
spec: {type: local, environments: [dev]}
""",
    "manifests/chat.yaml": """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat}
spec: {environments: [dev], provider: local, model: gpt-4o-mini}
""",
    ".gitignore": ".reconciler/\n",
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One deployment in dev, applied (by the process the apply test starts, or here)."""
    root = init_repo(tmp_path_factory.mktemp("wiring") / "repo")
    write_files(root, FILES)
    commit_all(root, "chat in dev")
    yield root


def cli(repo: Path, *args: str) -> Result:
    return run_process(["--repo", str(repo), *args])


@pytest.fixture(scope="module")
def applied(repo: Path) -> str:
    """The run that applied chat in dev."""
    r = cli(repo, "apply")
    assert r.code == 0, r.out + r.err
    assert "dev: applied (run " in r.out and "1 applied" in r.out
    return r.out.split("(run ", 1)[1].split(")", 1)[0]


def test_validate(repo: Path) -> None:
    r = cli(repo, "validate")
    assert (r.code, r.out) == (0, "valid: 3 documents, 1 instances, 1 environments (dev)\n")


def test_validate_exits_1_on_a_problem(tmp_path: Path) -> None:
    bad = init_repo(tmp_path / "bad")
    write_files(bad, {"manifests/x.yaml": "kind: Nothing\n"})
    commit_all(bad, "bad")
    r = cli(bad, "validate")
    assert r.code == 1 and "manifests/x.yaml:" in r.out + r.err


def test_schema(tmp_path: Path) -> None:
    r = cli(tmp_path, "schema", "--out", str(tmp_path / "schemas"))
    assert r.code == 0, r.err
    assert any(line.endswith(".json") for line in r.out.splitlines())
    assert list((tmp_path / "schemas").glob("*.json"))


def test_init(tmp_path: Path) -> None:
    r = cli(tmp_path, "init", str(tmp_path / "new"))
    assert r.code == 0, r.err
    assert r.out.startswith("created ") and "next: cd " in r.out
    assert (tmp_path / "new" / "reconciler.yaml").exists()


def test_plan(repo: Path) -> None:
    r = cli(repo, "plan", "--json", "--detailed-exitcode")
    assert r.code in (0, 2), r.err  # 2: changes (before the apply test ran)
    assert [e["name"] for e in json.loads(r.out)["environments"]] == ["dev"]


def test_approvals(repo: Path) -> None:
    r = cli(repo, "approvals", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["passed"] is True


def test_approve_needs_its_options(repo: Path) -> None:
    r = cli(repo, "approve", "--reviewer", "alice")
    assert r.code == 2  # click's usage error, on stderr
    assert "Missing option '--pr'" in r.err and r.out == ""


def test_apply_and_status(repo: Path, applied: str) -> None:
    r = cli(repo, "status", "--json")
    assert r.code == 0, r.err
    (dev,) = json.loads(r.out)
    assert dev["environment"] == "dev" and dev["run_id"] == applied


def test_drift(repo: Path, applied: str) -> None:
    r = cli(repo, "drift", "--json")
    assert r.code == 0, r.out + r.err
    assert set(json.loads(r.out)) == {"dev"}


def test_rollback_says_what_it_needs(repo: Path) -> None:
    r = cli(repo, "rollback")
    assert r.code == 1
    assert r.err == "error: name the commits to roll back, or --to COMMIT (not both)\n"


def test_history_and_show(repo: Path, applied: str) -> None:
    r = cli(repo, "history", "--json")
    assert r.code == 0, r.err
    assert [h["id"] for h in json.loads(r.out)] == [applied]
    shown = cli(repo, "show", applied)
    assert shown.code == 0, shown.err
    assert applied in shown.out and "chat" in shown.out


def test_show_of_no_such_run(repo: Path) -> None:
    r = cli(repo, "show", "nope")
    assert r.code == 1 and r.err.startswith("error: no run 'nope' is recorded\n")


def test_state_migrate(repo: Path, applied: str, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    r = cli(repo, "state", "migrate", "--to", f"sqlite:///{target}")
    assert r.code == 0, r.out + r.err
    copied = cli(repo, "--state", f"sqlite:///{target}", "history", "--json")
    assert [h["id"] for h in json.loads(copied.out)] == [applied]


def test_overview_and_schedules(repo: Path, applied: str) -> None:
    r = cli(repo, "overview")
    assert r.code == 0, r.err
    assert "dev: sandbox" in r.out and applied in r.out
    s = cli(repo, "schedules")
    assert s.code == 0, s.err


def test_run_executions_and_metrics(repo: Path, applied: str) -> None:
    r = cli(repo, "run", "chat", "--env", "dev")
    assert r.code == 0, r.err
    assert r.out.startswith("execution ex-") and ": completed\n" in r.out
    ex = cli(repo, "executions")
    assert ex.code == 0 and "chat" in ex.out
    m = cli(repo, "metrics")
    assert m.code == 0 and "chat" in m.out


def test_promote_of_an_unknown_environment(repo: Path) -> None:
    r = cli(repo, "promote", "--from", "dev", "--to", "prod")
    assert (r.code, r.err) == (1, "error: unknown environment 'prod'\n")


def test_eval_of_an_unknown_eval(repo: Path) -> None:
    r = cli(repo, "eval", "nope", "--env", "dev")
    assert (r.code, r.err) == (1, "error: no Eval named 'nope'\n")


def test_agent_needs_a_clone(repo: Path, tmp_path: Path) -> None:
    r = cli(repo, "agent", "--clone", str(tmp_path / "clone"))
    assert r.code == 1
    assert r.err.startswith(f"error: {tmp_path / 'clone'} is not a git repository")


def test_serve(repo: Path, applied: str) -> None:
    server = start(repo, {})  # waits until /healthz says ready
    try:
        history = server.get("/api/history")
        assert history.status_code == 200 and applied in history.text
    finally:
        err = server.stop()
    assert "Traceback" not in err


def test_watch_stops_on_ctrl_c(repo: Path) -> None:
    """Watch runs until interrupted: it plans once at start, and SIGINT ends it cleanly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--repo", str(repo), "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_environment(),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first plan: the command is running
        assert first, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, err
    assert out.endswith("stopped\n")


def test_unknown_command_is_a_usage_error(repo: Path) -> None:
    r = cli(repo, "nonsense")
    assert r.code == 2 and "No such command 'nonsense'" in r.err
