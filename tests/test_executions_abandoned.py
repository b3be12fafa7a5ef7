"""An execution whose holder died on another machine cannot be seen to die, but cannot
outlive its deadline: past it (and a grace for clock skew) the next reader records it
failed, saying so. Here a real `reconciler run` is killed mid-call and its record is
rewritten as another machine's, as an agent killed elsewhere would leave it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fakes.deploy_api import FakeDeployApi
from run_world import TOKEN, as_json, cli, make_repo, run_under_way

from reconciler.runs.model import ABANDON_GRACE, Holder, Query
from reconciler.runs.store import open_executions, reap

STATE = "sqlite:///.reconciler/state.db"


@pytest.fixture
def api() -> Iterator[FakeDeployApi]:
    with FakeDeployApi(token=TOKEN) as server:
        yield server


def test_a_run_killed_on_another_machine_is_failed_after_its_deadline(
    tmp_path: Path, api: FakeDeployApi
) -> None:
    repo = make_repo(tmp_path / "repo", api.url)
    assert cli(repo, "apply").code == 0
    with run_under_way(repo, api):
        pass
    store = open_executions(STATE, repo_root=repo, env={})
    try:
        (ex,) = store.find(Query(limit=None))
        assert ex.status == "running" and ex.started_at is not None
        # the call's own deadline: the deployment declares no timeoutSeconds (60 s)
        assert ex.deadline == ex.started_at + timedelta(seconds=60)
        ex.holder = Holder("agent-7.other-host", "another-machine", 4242)
        assert store.transition(ex, ("running",))
        assert ex.deadline is not None
        # within its deadline and grace, nobody can tell: it stays running
        assert reap(store, ex.deadline + ABANDON_GRACE) == []
    finally:
        store.close()
    (still,) = as_json(cli(repo, "executions", "--json"))
    assert still["status"] == "running" and still["deadline"]
    # a reader past the deadline and its grace (`executions`, `run` and the agent's
    # firer reap before they read)
    late = ex.deadline + ABANDON_GRACE + timedelta(seconds=1)
    store = open_executions(STATE, repo_root=repo, env={})
    try:
        (marked,) = reap(store, late)
    finally:
        store.close()
    (ex_doc,) = as_json(cli(repo, "executions", "--json"))
    assert ex_doc["id"] == marked.id and ex_doc["status"] == "failed"
    assert ex_doc["error"].startswith(
        "abandoned: its holder (agent-7.other-host, pid 4242) recorded no outcome by its deadline"
    )
    assert ex_doc["finished_at"]
