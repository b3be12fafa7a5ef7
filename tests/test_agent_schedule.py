"""The agent's schedule judged on an injected clock, in process: a state outage is tried
again after a short fixed pause and leaves the change back-off alone; a failed change
doubles its pause; `--shard` selectors; work keys by provider account."""

from __future__ import annotations

import io
import json
import logging
import threading
from contextlib import redirect_stderr
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import commit_all, init_repo, write_files

from reconciler import log
from reconciler.agent.cluster import Shard, work_key
from reconciler.agent.loop import Agent, AgentOptions, Pass, Track
from reconciler.agent.metrics import Metrics
from reconciler.agent.notify import Notifier
from reconciler.agent.policy import Sync
from reconciler.agent.source import DeployBranch
from reconciler.config import load_settings
from reconciler.errors import ConfigError
from reconciler.load import load
from reconciler.session import Session

ENVS = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: a, labels: {team: ml, tier: gold}}
spec: {sync: {auto: true, shard: one}}
---
apiVersion: reconciler/v1
kind: Environment
metadata: {name: b, labels: {team: ml}}
spec: {sync: {auto: true}}
---
apiVersion: reconciler/v1
kind: Environment
metadata: {name: c}
spec: {}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: p}
spec:
  type: http
  environments: [a, b]
  config: {baseUrl: "http://127.0.0.1:9"}
  credentials: {tokenEnv: SHARED_TOKEN}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: q}
spec:
  type: http
  environments: [c]
  config: {baseUrl: "http://127.0.0.1:9"}
  credentials: {tokenEnv: OTHER_TOKEN}
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    root = init_repo(tmp_path / "repo")
    write_files(root, {"manifests/all.yaml": ENVS, ".gitignore": ".reconciler/\n"})
    return root, commit_all(root, "three environments")


def _agent(root: Path, clock: Clock) -> Agent:
    settings = load_settings(root, state_url="sqlite:///.reconciler/state.db", env={})
    session = Session.start(settings)
    source = DeployBranch(root, env={}, own_clone=False, register=session.redactor.add)
    options = AgentOptions(state_retry=15.0)
    return Agent(
        session,
        source,
        notifier=Notifier({}, session.redactor),
        metrics=Metrics(),
        options=options,
        clock=clock,
    )


def test_a_state_outage_is_retried_shortly_without_the_change_back_off(
    repo: tuple[Path, str],
) -> None:
    clock = Clock(1000.0)
    agent = _agent(repo[0], clock)
    t = Track(Sync("a", True, 300.0, False, 300.0), next_sync=1300.0, next_drift=1300.0)
    began = datetime.now(UTC)
    for _ in range(4):  # however long the outage, the pause stays short and fixed
        agent._after_error(
            t, "agent", began, "cannot reach the state", Pass(None, None), state=True
        )
        assert t.failures == 0 and t.next_sync == clock.now + 15.0 >= t.next_drift
        clock.now += 15.0
    assert agent.metrics.runs.labels("a", "agent", "error")._value.get() == 4

    clock.now = 2000.0
    pauses = []
    for _ in range(3):  # a failed change: interval x 2^n
        t.next_sync = clock.now
        agent._after_error(t, "agent", began, "the change failed", Pass(None, None), state=False)
        pauses.append(t.next_sync - clock.now)
    assert pauses == [300.0, 600.0, 1200.0] and t.failures == 3


def test_shard_selectors(repo: tuple[Path, str]) -> None:
    root, sha = repo
    desired = load(load_settings(root, env={}), sha).desired
    assert [e for e in ("a", "b", "c") if Shard.parse("one").selects(desired, e)] == ["a"]
    ml = Shard.parse("team=ml")
    assert [e for e in ("a", "b", "c") if ml.selects(desired, e)] == ["a", "b"]
    gold = Shard.parse("team=ml, tier=gold")
    assert [e for e in ("a", "b", "c") if gold.selects(desired, e)] == ["a"]
    for bad in ("", "team=ml,=x", "team=ml,tier"):
        with pytest.raises(ConfigError):
            Shard.parse(bad)
    # Environments writing to one provider account share a work key; others do not.
    assert work_key(desired, "a", "account") == work_key(desired, "b", "account")
    assert work_key(desired, "a", "account") != work_key(desired, "c", "account")
    assert work_key(desired, "a", "environment") != work_key(desired, "b", "environment")


def test_foreign_loggers_and_thread_errors_are_json_lines_through_redaction() -> None:
    secret = "pw-foreign-logger-5e6f7a"
    hook = threading.excepthook
    err = io.StringIO()

    def boom() -> None:
        raise RuntimeError(f"thread failed with {secret}")

    try:
        with redirect_stderr(err):
            log.configure(fmt="json")
            log.register_secret(secret)
            logging.getLogger("psycopg.pool").warning(
                "error connecting in 'pool-1': password=%s\nsecond line", secret
            )
            t = threading.Thread(target=boom, name="worker")
            t.start()
            t.join()
            logging.getLogger("noisy").info("below the foreign threshold")
    finally:  # leave no handler writing to this test's stderr behind
        threading.excepthook = hook
        root = logging.getLogger()
        for h in [h for h in root.handlers if isinstance(h, log._Foreign)]:
            root.removeHandler(h)
        log.forget_secrets()
    lines = err.getvalue().splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["event"].split(":")[0] for d in docs] == [
        "error connecting in 'pool-1'",
        "a thread ended with an error",
    ]
    assert docs[0]["logger"] == "psycopg.pool" and docs[0]["level"] == "warning"
    assert docs[1]["thread"] == "worker" and "RuntimeError" in docs[1]["exception"]
    assert secret not in "\n".join(lines)
