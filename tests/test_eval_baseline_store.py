"""An eval's baseline counts only runs made in the baseline environment itself: the
evidence digest says what answers, not with which provider settings, so a run in
another environment (another provider, even a broken one) must not set the bar."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from reconciler.gate.evidence import baseline_of
from reconciler.runs.model import Execution
from reconciler.runs.store import open_executions

AT = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
D, E = "sha256:" + "d" * 64, "sha256:" + "e" * 64


def test_a_baseline_counts_only_runs_made_in_the_baseline_environment(tmp_path: Path) -> None:
    store = open_executions("sqlite:///state.db", repo_root=tmp_path, env={})
    try:
        for n, (env, passed) in enumerate([("production", True), ("dev", False)]):
            ex = Execution(f"ex-{n}", env, "chat", "eval", "completed", AT)
            ex.check, ex.digest, ex.passed = "quality", D, passed
            ex.eval_run, ex.eval_digest, ex.planned = f"ex-run-{n}", E, 1
            assert store.add(ex)
        assert baseline_of(store, "production", "quality", "chat", E, D) == 1.0
        assert baseline_of(store, "staging", "quality", "chat", E, D) is None
        assert baseline_of(store, "production", "quality", "chat", E, "sha256:" + "0" * 64) is None
    finally:
        store.close()
