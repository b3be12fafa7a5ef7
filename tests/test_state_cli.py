"""Commands that only look at state open it read-only: through the real CLI, they leave
no state file behind and never migrate one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import run_cli


@pytest.mark.parametrize(
    ("args", "code"),
    [(["plan"], 0), (["status"], 0), (["history"], 0), (["drift"], 0), (["approvals"], 3)],
    ids=["plan", "status", "history", "drift", "approvals"],
)
def test_looking_commands_create_no_state(example_repo: Path, args: list[str], code: int) -> None:
    assert not (example_repo / ".reconciler").exists()
    r = run_cli(["--repo", str(example_repo), *args])
    assert r.code == code, r.err
    assert "Traceback" not in r.err
    assert not (example_repo / ".reconciler").exists()


def test_plan_reads_an_applied_state_without_writing_it(example_repo: Path) -> None:
    r = run_cli(["--repo", str(example_repo), "apply", "--env", "dev"])
    assert r.code == 0, r.err
    db = example_repo / ".reconciler" / "state.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    before = db.read_bytes()
    r = run_cli(["--repo", str(example_repo), "plan", "--env", "dev", "--detailed-exitcode"])
    assert r.code == 0, r.err + r.out  # nothing to change: the applied state was read
    r = run_cli(["--repo", str(example_repo), "status", "--env", "dev"])
    assert r.code == 0 and "dev" in r.out
    assert db.read_bytes() == before
