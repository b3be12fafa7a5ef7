"""Agents at scale, as processes on a real PostgreSQL: environments worked in parallel
(a slow one delays no other), static shards (neither touches the other's environments
or needs its credentials), dynamic assignment (killing one of three moves only its
environments, nothing applied twice), /readyz following the state through a cut
network, metrics matching history on a failed run, and every stderr line JSON. Also:
a transaction-pooling PgBouncer (a real one) refused at start-up, and the members
table's rendezvous, singleton and pruning on the real server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from agent_world import AgentProcess, Remote, environment, runs
from fakes.deploy_api import FakeDeployApi
from fakes.hooks import HookReceiver
from fakes.tcpproxy import TcpProxy
from pgbouncer import pgbouncer
from psycopg.conninfo import conninfo_to_dict

from reconciler.errors import ConfigError
from reconciler.state.members import Membership, check_session_locks, owned, rendezvous

pytestmark = pytest.mark.slow

VENDOR = "vendor-SECRET-scale-5d4c3b"


def _env_files(
    name: str, api: FakeDeployApi, token_var: str, *, sync: str, labels: str = "", model: str = "m1"
) -> dict[str, str]:
    doc = environment(name, f"  sync: {{{sync}}}\n")
    if labels:
        doc = doc.replace(f"metadata: {{name: {name}}}", f"metadata: {{name: {name}, {labels}}}")
    return {
        f"manifests/{name}/env.yaml": doc,
        f"manifests/{name}/provider.yaml": (
            "apiVersion: reconciler/v1\nkind: Provider\n"
            f"metadata: {{name: api-{name}}}\nspec:\n  type: http\n"
            f"  environments: [{name}]\n"
            f'  config: {{baseUrl: "{api.url}", timeoutSeconds: 60, retries: 0}}\n'
            f"  credentials: {{tokenEnv: {token_var}}}\n"
        ),
        f"manifests/{name}/chat.yaml": (
            "apiVersion: reconciler/v1\nkind: Deployment\n"
            f"metadata: {{name: chat-{name}}}\nspec:\n  environments: [{name}]\n"
            f"  provider: api-{name}\n  model: {model}\n  endpoint: /chat-{name}\n"
            "  env: {VENDOR_KEY: {secretEnv: VENDOR_KEY}}\n"
        ),
    }


def _applied(state: str, root: Path, env: str, commit: str) -> bool:
    return any(r.commit == commit and r.outcome == "applied" for r in runs(state, root, env))


def _json_only(agent: AgentProcess) -> None:
    """Every line the agent wrote on stderr is one JSON object."""
    for line in agent.output().splitlines():
        assert isinstance(json.loads(line), dict), line


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


def test_a_slow_environment_does_not_delay_another(
    tmp_path: Path, postgres_url: str, remote: Remote
) -> None:
    with (
        FakeDeployApi(token="tok-slow-12345", latency=600) as slow,
        FakeDeployApi(token="tok-fast-12345") as fast,
    ):
        first = remote.push(
            {
                **_env_files("slow", slow, "SLOW_TOKEN", sync="auto: true, interval: 1s"),
                **_env_files("fast", fast, "FAST_TOKEN", sync="auto: true, interval: 1s"),
                ".gitignore": ".reconciler/\n",
            },
            "two environments",
        )
        env = {"SLOW_TOKEN": "tok-slow-12345", "FAST_TOKEN": "tok-fast-12345", "VENDOR_KEY": VENDOR}
        clone = tmp_path / "clone"
        with AgentProcess(remote, clone, postgres_url, "--workers", "2", env=env) as agent:
            agent.wait_until(
                lambda: _applied(postgres_url, clone, "fast", first), "fast applied", timeout=60
            )
            second = remote.push({"manifests/fast/chat.yaml": _env_files(
                "fast", fast, "FAST_TOKEN", sync="auto: true, interval: 1s", model="m2"
            )["manifests/fast/chat.yaml"]}, "fast gets m2")  # fmt: skip
            agent.wait_until(
                lambda: _applied(postgres_url, clone, "fast", second), "fast's push applied"
            )
            # Meanwhile the slow environment's first call is still waiting for its answer.
            assert slow.create_count == Counter()
            assert not any(r.outcome != "running" for r in runs(postgres_url, clone, "slow"))
            doc = agent.get("/readyz").json()
            assert doc["environments"]["slow"]["busy"] is True
            assert doc["environments"]["fast"]["lastPass"] in ("applied", "noop", "in-sync")
            _json_only(agent)


SHARDED = "auto: true, interval: 1s, shard: %s"


def test_two_shards_never_touch_each_others_environments_or_credentials(
    tmp_path: Path, postgres_url: str, remote: Remote
) -> None:
    with (
        FakeDeployApi(token="tok-one-abcdef") as api_one,
        FakeDeployApi(token="tok-two-abcdef") as api_two,
    ):
        first = remote.push(
            {
                **_env_files("a1", api_one, "ONE_TOKEN", sync=SHARDED % "one"),
                **_env_files("b1", api_one, "ONE_TOKEN", sync="auto: true, interval: 1s",
                             labels="labels: {team: one}"),
                **_env_files("a2", api_two, "TWO_TOKEN", sync=SHARDED % "two"),
                ".gitignore": ".reconciler/\n",
            },
            "two shards",
        )  # fmt: skip
        only_one = {"ONE_TOKEN": "tok-one-abcdef", "VENDOR_KEY": VENDOR}
        only_two = {"TWO_TOKEN": "tok-two-abcdef", "VENDOR_KEY": VENDOR}
        with (
            AgentProcess(remote, tmp_path / "c1", postgres_url, "--shard", "one", env=only_one)
            as one,
            AgentProcess(remote, tmp_path / "c2", postgres_url, "--shard", "two", env=only_two)
            as two,
            AgentProcess(remote, tmp_path / "c3", postgres_url, "--shard", "team=one",
                         "--no-dashboard", env=only_one) as team,
        ):  # fmt: skip
            root = tmp_path / "c1"
            one.wait_until(lambda: _applied(postgres_url, root, "a1", first), "a1 applied")
            two.wait_until(lambda: _applied(postgres_url, root, "a2", first), "a2 applied")
            team.wait_until(lambda: _applied(postgres_url, root, "b1", first), "b1 applied")
            for agent, mine in ((one, {"a1"}), (two, {"a2"}), (team, {"b1"})):
                seen = {e["environment"] for e in agent.events() if "environment" in e}
                assert seen == mine, agent.output()
                assert not agent.events("failed"), agent.output()
                _json_only(agent)
            assert set(one.get("/readyz").json()["environments"]) == {"a1"}
        # Each API heard only of its own shard's environments (its token, or 401).
        assert {k[0] for k in api_one.create_count} == {"a1", "b1"}
        assert {k[0] for k in api_two.create_count} == {"a2"}


def _owned(agent: AgentProcess) -> set[str]:
    doc = agent.get("/readyz").json()
    return {e for e, v in doc["environments"].items() if v["owned"]}


def test_dynamic_assignment_moves_only_a_killed_agents_environments(
    tmp_path: Path, postgres_url: str, remote: Remote
) -> None:
    names = [f"e{i}" for i in range(8)]
    with FakeDeployApi(token="tok-dyn-abcdef") as api:

        def files(model: str) -> dict[str, str]:
            out: dict[str, str] = {".gitignore": ".reconciler/\n"}
            for n in names:
                sync = "auto: true, interval: 1s"
                out.update(_env_files(n, api, "DYN_TOKEN", sync=sync, model=model))
            return out

        first = remote.push(files("m1"), "eight environments")
        env = {"DYN_TOKEN": "tok-dyn-abcdef", "VENDOR_KEY": VENDOR}
        args = ("--dynamic", "--heartbeat", "1s", "--no-dashboard")
        with (
            AgentProcess(remote, tmp_path / "a", postgres_url, *args, env=env) as a,
            AgentProcess(remote, tmp_path / "b", postgres_url, *args, env=env) as b,
            AgentProcess(remote, tmp_path / "c", postgres_url, *args, env=env) as c,
        ):
            root = tmp_path / "a"
            agents = [a, b, c]

            def partitioned() -> bool:
                sets = [_owned(x) for x in agents]
                return sum(map(len, sets)) == len(names) and set().union(*sets) == set(names)

            a.wait_until(partitioned, "the three agents share the environments")
            a.wait_until(
                lambda: all(_applied(postgres_url, root, n, first) for n in names), "all applied"
            )
            before = {id(x): _owned(x) for x in agents}
            victim = max(agents, key=lambda x: len(before[id(x)]))
            assert before[id(victim)], "rendezvous gave the victim nothing to move"
            survivors = [x for x in agents if x is not victim]
            victim.proc.kill()
            victim.proc.wait(30)

            def taken_over() -> bool:
                now = {id(x): _owned(x) for x in survivors}
                return set().union(*now.values()) == set(names) and all(
                    before[id(x)] <= now[id(x)] for x in survivors
                )

            survivors[0].wait_until(taken_over, "the survivors own every environment")
            after = {id(x): _owned(x) for x in survivors}
            for x in survivors:  # each kept its own and gained only some of the victim's
                assert after[id(x)] - before[id(x)] <= before[id(victim)]
            second = remote.push(files("m2"), "every environment gets m2")
            survivors[0].wait_until(
                lambda: all(_applied(postgres_url, root, n, second) for n in names),
                "the push applied everywhere",
            )
            for x in survivors:
                _json_only(x)
        for n in names:  # each commit applied once per environment, each object made once
            applied = Counter(r.commit for r in runs(postgres_url, root, n) if r.changes)
            assert applied == Counter({first: 1, second: 1}), n
            assert api.create_count[(n, f"chat-{n}")] == 1


def test_readyz_follows_the_state_and_metrics_match_history(
    tmp_path: Path, postgres_url: str, remote: Remote
) -> None:
    params = conninfo_to_dict(postgres_url)
    with (
        FakeDeployApi(token="tok-ready-abcdef") as api,
        TcpProxy(str(params["host"]), int(params["port"])) as proxy,
        HookReceiver() as hooks,
    ):
        url = postgres_url.replace(f":{params['port']}/", f":{proxy.port}/")
        sync = "auto: true, interval: 1s"
        files = _env_files("dev", api, "READY_TOKEN", sync=sync)
        files["manifests/dev/env.yaml"] += "  notify: [{urlEnv: RECONCILER_NOTIFY_OPS}]\n"
        first = remote.push({**files, ".gitignore": ".reconciler/\n"}, "dev")
        env = {
            "READY_TOKEN": "tok-ready-abcdef",
            "VENDOR_KEY": VENDOR,
            "RECONCILER_NOTIFY_OPS": hooks.url(),
        }
        clone = tmp_path / "clone"
        with AgentProcess(remote, clone, url, "--no-dashboard", env=env) as agent:
            agent.wait_until(lambda: _applied(postgres_url, clone, "dev", first), "applied")
            agent.wait_until(lambda: agent.get("/readyz").status_code == 200, "ready")
            proxy.cut()
            agent.wait_until(
                lambda: agent.get("/readyz").status_code == 503, "unready", timeout=3.0
            )
            doc = agent.get("/readyz").json()
            assert doc["status"] == "unready" and doc["state"]["ok"] is False
            assert agent.get("/healthz").status_code == 200  # alive all the same
            proxy.restore()
            agent.wait_until(lambda: agent.get("/readyz").status_code == 200, "ready again")

            # A state write refused by the server mid-run: the run is recorded failed,
            # and counted, told and logged as that run.
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$BEGIN RAISE EXCEPTION 'refused by a trigger'; END$$"
                )
                conn.execute(
                    "CREATE TRIGGER refuse BEFORE INSERT ON reconciler_changes "
                    "FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
            second = remote.push(
                {"manifests/dev/chat.yaml": files["manifests/dev/chat.yaml"].replace("m1", "m2")},
                "m2",
            )

            def failed_runs() -> list[Any]:
                return [r for r in runs(postgres_url, clone, "dev") if r.outcome == "failed"]

            agent.wait_until(lambda: bool(failed_runs()), "a failed run recorded")
            agent.wait_until(
                lambda: (
                    agent.metric(
                        "reconciler_agent_runs_total",
                        environment="dev",
                        trigger="agent",
                        outcome="failed",
                    )
                    == len(failed_runs())
                ),
                "metrics count the failed runs",
            )
            run = failed_runs()[-1]
            assert run.commit == second
            # The line is written after the run is counted; an earlier "failed" (the
            # state down, above) names no run.
            line = agent.wait_for_line(lambda text: '"event": "failed"' in text and run.id in text)
            assert json.loads(line)["run"] == run.id
            agent.wait_until(lambda: run.id in json.dumps(hooks.posts), "the notice names it")
            assert agent.terminate() == 0
            _json_only(agent)


def test_a_transaction_pooling_pgbouncer_is_refused(
    tmp_path: Path, postgres_server: Any, remote: Remote
) -> None:
    check_session_locks(postgres_server.url)  # PostgreSQL itself: fine
    with pgbouncer(postgres_server.url, mode="session") as url:
        check_session_locks(url)
    for size in (1, 5):
        with (
            pgbouncer(postgres_server.url, mode="transaction", pool_size=size) as url,
            pytest.raises(ConfigError, match="pool_mode=transaction"),
        ):
            check_session_locks(url)
    with pgbouncer(postgres_server.url, mode="transaction") as url:
        remote.push({".gitignore": ".reconciler/\n"}, "empty")
        p = subprocess.run(
            [sys.executable, "-m", "reconciler", "--state", url, "--log-format", "json",
             "agent", "--clone", str(tmp_path / "clone"), "--port", "0"],
            capture_output=True, text=True, timeout=120,
            env={"PATH": "/usr/bin:/bin", "RECONCILER_REMOTE": str(remote.bare)},
        )  # fmt: skip
        assert p.returncode != 0
        assert "pool_mode=transaction" in p.stderr
        assert "Traceback" not in p.stderr
        password = str(conninfo_to_dict(postgres_server.url)["password"])
        assert password not in p.stderr


def _eventually(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_members_rendezvous_singleton_and_pruning(postgres_url: str) -> None:
    keys = {f"e{i}": f"env\0e{i}" for i in range(40)}
    a = Membership(postgres_url, name="a", ttl=30)
    b = Membership(postgres_url, name="b", ttl=30)
    c = Membership(postgres_url, name="c", ttl=30)
    try:
        for m in (a, b, c):
            m.beat()
        assert a.beat() == ["a", "b", "c"]
        three = {m: owned(keys, m, ["a", "b", "c"]) for m in "abc"}
        assert set().union(*three.values()) == set(keys) and sum(map(len, three.values())) == 40
        # Singleton: one holder, the others standby until its session ends.
        assert a.hold("duty") and not b.hold("duty") and not c.hold("duty")
        a.leave()  # the server ends a's session (and frees its lock) a moment later
        assert b.beat() == ["b", "c"]
        _eventually(lambda: b.hold("duty"), "the standby takes the duty")
        assert not c.hold("duty")
        two = {m: owned(keys, m, ["b", "c"]) for m in "bc"}
        for m in "bc":  # only a's keys moved
            assert two[m] - three[m] <= three["a"] and three[m] <= two[m]
        assert rendezvous("x", []) is None
        # A member whose session ended without leaving is not live, and is pruned.
        conn = c._conn
        assert conn is not None
        conn.close()
        _eventually(lambda: b.beat() == ["b"], "c is no longer live")
        assert b.prune(older_than=300) == 1
    finally:
        for m in (a, b, c):
            m.leave()
