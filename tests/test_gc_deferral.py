"""Planning and applying keep what they build until the run ends: full collections,
which would rescan all of it again and again, wait until then, while young
collections go on freeing short-lived cycles (a field diff's). Counted in
collections and objects, never timed."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import init_repo, write_files
from executor_world import REPO_ENV

from reconciler.config import load_settings
from reconciler.engine.apply import ApplyRequest, run_apply
from reconciler.manifests import full_collections_deferred
from reconciler.session import Session
from reconciler.state.sqlite import SQLiteState


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generation of every collection the GC runs meanwhile."""
    seen: list[int] = []

    def watch(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            seen.append(info["generation"])

    gc.callbacks.append(watch)
    try:
        yield seen
    finally:
        gc.callbacks.remove(watch)


def test_full_collections_wait_while_young_ones_free_cycles(collections: list[int]) -> None:
    before = gc.get_threshold()
    kept: list[list[int]] = []
    with full_collections_deferred():
        cycle = _Cycle()
        gone = weakref.ref(cycle)
        del cycle
        for i in range(300_000):  # long-lived containers, like a plan's changes
            kept.append([i])
        assert gone() is None  # a young collection freed the cycle
    assert collections and 2 not in collections
    assert gc.get_threshold() == before


def test_nested_and_concurrent_blocks_share_one_deferral() -> None:
    before = gc.get_threshold()
    inside = threading.Event()
    leave = threading.Event()

    def other() -> None:
        with full_collections_deferred():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    with full_collections_deferred():
        deferred = gc.get_threshold()
        assert deferred[:2] == before[:2] and deferred[2] > before[2]
        t.start()
        assert inside.wait(10)
        with full_collections_deferred():
            assert gc.get_threshold() == deferred
    assert gc.get_threshold() == deferred  # the other thread is still planning
    leave.set()
    t.join(10)
    assert gc.get_threshold() == before


REPO = {
    ".gitignore": ".reconciler/\n",
    "manifests/all.yaml": REPO_ENV
    + "".join(
        f"""---
apiVersion: reconciler/v1
kind: Deployment
metadata: {{name: d{i}}}
spec: {{environments: [dev], provider: registry, model: gpt-4o}}
"""
        for i in range(3)
    ),
}


def test_an_apply_run_defers_full_collections_until_it_ends(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    write_files(repo, REPO)
    before = gc.get_threshold()
    during: list[tuple[int, int, int]] = []

    class Watching(SQLiteState):
        def record_change(self, *args: Any, **kwargs: Any) -> None:
            during.append(gc.get_threshold())
            super().record_change(*args, **kwargs)

    store = Watching(tmp_path / "state.db", env={})
    try:
        report = run_apply(Session.start(load_settings(repo, env={})), store, ApplyRequest())
    finally:
        store.close()
    assert report.exit_code == 0
    assert len(during) == 3 and all(t[2] > before[2] for t in during)
    assert gc.get_threshold() == before
