"""Schedules and deploy windows through the CLI: next runs in plan and status, a deny
window blocking apply with its reopening time, and a recorded override."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from conftest import commit_all, run_cli

ENVS = "manifests/environments.yaml"


def cli(repo: Path, *args: str) -> tuple[int, str]:
    r = run_cli(["--repo", str(repo), *args])
    assert "Traceback" not in r.err
    return r.code, r.out + r.err


def test_plan_and_status_show_next_runs(example_repo: Path) -> None:
    code, out = cli(example_repo, "plan", "--env", "staging", "--json")
    assert code == 0
    env = json.loads(out)["environments"][0]
    sched = next(c for c in env["changes"] if c["name"] == "nightly-reindex")
    runs = [datetime.fromisoformat(t) for t in sched["next_runs"]]
    assert len(runs) == 3 and runs == sorted(runs)
    # 02:00 Europe/Berlin is 01:00 UTC in winter, 00:00 UTC in summer
    assert all(t.minute == 0 and t.hour in (0, 1) for t in runs)
    code, out = cli(example_repo, "plan", "--env", "staging")
    assert "# next run: " in out and "Europe/Berlin" in out
    assert cli(example_repo, "apply", "--env", "staging")[0] == 0
    code, out = cli(example_repo, "status", "--env", "staging", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["nightly-reindex"]["next_run"] >= sched["next_runs"][0]
    assert "Europe/Berlin" in rows["nightly-reindex"]["next_run_local"]


def _deny_dev_now(repo: Path, allow_override: bool) -> int:
    """A deny window on dev that is open right now (the current UTC hour, 3 hours)."""
    hour = datetime.now(UTC).hour
    dev = "metadata: {name: dev}\nspec:\n"
    extra = f'  windows:\n    - {{deny: "0 {hour} * * *", duration: 3h, timezone: UTC}}\n'
    if allow_override:
        extra += "  allowOverride: true\n"
    text = (repo / ENVS).read_text()
    assert dev in text
    (repo / ENVS).write_text(text.replace(dev, dev + extra, 1))
    commit_all(repo, "freeze dev")
    return (hour + 3) % 24


def test_deny_window_blocks_with_reopening_time(example_repo: Path) -> None:
    reopens = _deny_dev_now(example_repo, allow_override=False)
    code, out = cli(example_repo, "apply", "--env", "dev")
    assert code == 3
    assert "deny window" in out and f"{reopens:02d}:00 UTC" in out
    code, out = cli(example_repo, "apply", "--env", "dev", "--override-window")
    assert code == 3 and "does not allow --override-window" in out
    code, out = cli(example_repo, "status", "--json")
    assert json.loads(out) == []


def test_override_window_is_recorded(example_repo: Path) -> None:
    _deny_dev_now(example_repo, allow_override=True)
    assert cli(example_repo, "apply", "--env", "dev")[0] == 3
    code, out = cli(example_repo, "apply", "--env", "dev", "--override-window")
    assert code == 0, out
    code, out = cli(example_repo, "history", "--json")
    assert json.loads(out)[0]["details"]["override_window"] is True
    code, out = cli(example_repo, "history")
    assert "override window" in out


def test_end_at_before_start_at_is_a_located_error(example_repo: Path) -> None:
    path = example_repo / "manifests" / "schedules" / "reindex.yaml"
    text = path.read_text()
    bounds = (
        "  concurrency: forbid\n"
        '  startAt: "2026-06-10T09:00:00+02:00"\n'
        '  endAt: "2026-06-01T09:00:00+02:00"\n'
    )
    override = "    dev: {interval: 30m}\n"
    assert "  concurrency: forbid\n" in text and override in text
    text = text.replace("  concurrency: forbid\n", bounds, 1)
    # an override whose own endAt falls before the schedule's startAt
    text = text.replace(override, '    dev: {interval: 30m, endAt: "2026-01-01T00:00:00Z"}\n')
    text = text.replace("  interval: 6h\n", '  interval: 6h\n  startAt: "2026-02-01T00:00:00Z"\n')
    path.write_text(text)
    commit_all(example_repo, "end before start")
    code, out = cli(example_repo, "validate")
    assert code == 1
    lines = text.splitlines()
    end_line = next(i for i, line in enumerate(lines, 1) if line.startswith("  endAt:"))
    assert (
        f"manifests/schedules/reindex.yaml:{end_line}:10: endAt 2026-06-01T09:00:00+02:00 "
        "must be after startAt 2026-06-10T09:00:00+02:00" in out
    )
    dev_line = next(i for i, line in enumerate(lines, 1) if "dev: {interval: 30m" in line)
    assert f"manifests/schedules/reindex.yaml:{dev_line}:" in out
    assert "endAt 2026-01-01T00:00:00Z must be after startAt 2026-02-01T00:00:00Z" in out
    assert cli(example_repo, "plan")[0] == 1
