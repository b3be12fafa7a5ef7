"""Benchmarks of deployments that run (issue 25).

    python bench/runs.py run [--latency 0.05] [--runs 5]
    python bench/runs.py fire [--schedules 1000] [--latency 0.1] [--parallelism 50]
    python bench/runs.py delay [--runs 3]

run: `reconciler run` as a process against the http stand-in answering after --latency,
against the same process with a stand-in answering at once (its start-up: loading the
manifests of record, opening state, recording the execution). Target: run <= start-up +
1.2 x latency.

fire: --schedules schedules all due at one fire time, each calling a deployment whose
stand-in answers after --latency, fired by one engine with --parallelism threads. Bound:
ceil(schedules / parallelism) x latency. Target: <= 1.3 x the bound.

delay: the firing thread (as `reconciler agent` runs it) with a clock set a few seconds
before a fire; prints how long after its time the call started. Target: < 1 s.

Each figure is the best of --runs (the machine may be shared); the spread is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fakes.deploy_api import FakeDeployApi  # noqa: E402

TOKEN = "bench-token-0123456789"
HEAD = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: bench}
spec: {}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: api}
spec:
  type: http
  environments: [bench]
  config: {baseUrl: "%s", timeoutSeconds: 30}
  credentials: {tokenEnv: BENCH_TOKEN}
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat}
spec: {environments: [bench], provider: api, model: gpt-4o-mini}
"""
SCHEDULE = """---
apiVersion: reconciler/v1
kind: Schedule
metadata: {name: s%d}
spec: {environments: [bench], deployment: chat, interval: 10m, input: {n: %d}}
"""


def sh(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def make_repo(url: str, schedules: int) -> Path:
    repo = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    (repo / "manifests").mkdir()
    text = HEAD % url + "".join(SCHEDULE % (i, i) for i in range(schedules))
    (repo / "manifests" / "all.yaml").write_text(text)
    (repo / ".gitignore").write_text(".reconciler/\n")
    sh(repo, "init", "-q", "-b", "main")
    sh(repo, "add", "-A")
    sh(repo, "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "bench")
    return repo


def reconciler(repo: Path, *args: str) -> float:
    env = {**os.environ, "BENCH_TOKEN": TOKEN}
    started = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "reconciler", "--repo", str(repo), *args],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    took = time.perf_counter() - started
    if p.returncode != 0:
        raise SystemExit(f"reconciler {' '.join(args)} failed:\n{p.stdout}{p.stderr}")
    return took


def spread(xs: list[float]) -> str:
    return f"best {min(xs):.3f} s, worst {max(xs):.3f} s over {len(xs)}"


def bench_run(latency: float, runs: int) -> None:
    with FakeDeployApi(token=TOKEN) as api:
        repo = make_repo(api.url, 0)
        reconciler(repo, "apply")
        reconciler(repo, "run", "chat", "--env", "bench")  # warm the byte code
        base, slow = [], []
        for _ in range(runs):
            api.latency = 0.0
            base.append(reconciler(repo, "run", "chat", "--env", "bench"))
            api.latency = latency
            slow.append(reconciler(repo, "run", "chat", "--env", "bench"))
    startup, took = min(base), min(slow)
    target = startup + 1.2 * latency
    print(f"run, stand-in answering at once (start-up): {spread(base)}")
    print(f"run, stand-in answering after {latency * 1000:.0f} ms: {spread(slow)}")
    print(f"target start-up + 1.2 x latency = {target:.3f} s: "
          f"{'met' if took <= target else 'NOT met'} "
          f"({took - startup:.3f} s over start-up)")  # fmt: skip


def _engine(repo: Path, parallelism: int):  # type: ignore[no-untyped-def]
    from reconciler.config import load_settings
    from reconciler.runs.fire import FireEngine
    from reconciler.runs.store import open_executions

    settings = load_settings(repo, env={**os.environ, "BENCH_TOKEN": TOKEN})
    store = open_executions(settings.state_url, repo_root=repo, env=settings.env)
    return settings, FireEngine(settings, store, parallelism=parallelism)


@contextlib.contextmanager
def stand_in(run_latency: float) -> Iterator[str]:
    """The stand-in in a process of its own: in this one, its request threads would
    compete with the engine's for the interpreter."""
    p = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.deploy_api", "--token", TOKEN,
         "--run-latency", str(run_latency)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None
        yield p.stdout.readline().strip()
    finally:
        p.terminate()
        p.wait(30)


def bench_fire(schedules: int, latency: float, parallelism: int) -> None:
    from reconciler.engine.live import ProvidersOfRecord
    from reconciler.session import Session
    from reconciler.state import open_state

    with stand_in(latency) as url:
        repo = make_repo(url, schedules)
        reconciler(repo, "apply", "--parallelism", "32")
        settings, engine = _engine(repo, parallelism)
        state = open_state(settings.state_url, repo_root=repo, env=settings.env, read_only=True)
        providers = ProvidersOfRecord(Session.start(settings)).get(state)
        rec = next(r for k, r in state.applied("bench").items() if k.kind == "Schedule")
        from reconciler.schedules import spec_next_runs

        fire = spec_next_runs(rec.spec, rec.applied_at, 1)[0]
        started = time.perf_counter()
        futures = engine.tick(state, providers, fire)
        recorded = time.perf_counter() - started
        done = [f.result(600) for f in futures]
        took = time.perf_counter() - started
        engine.close()
        state.close()
        ok = sum(1 for e in done if e.status == "completed")
    bound = math.ceil(schedules / parallelism) * latency
    print(f"{schedules} schedules due at once, {latency * 1000:.0f} ms each, parallelism "
          f"{parallelism}: {ok} completed in {took:.3f} s (all recorded and started after "
          f"{recorded:.3f} s)")  # fmt: skip
    print(f"bound {bound:.3f} s; ratio {took / bound:.2f} (target <= 1.3): "
          f"{'met' if took <= 1.3 * bound else 'NOT met'}")  # fmt: skip


def bench_delay(runs: int) -> None:
    from reconciler.runs.firer import Firer
    from reconciler.runs.model import Query
    from reconciler.runs.store import open_executions
    from reconciler.schedules import spec_next_runs
    from reconciler.state import open_state

    delays = []
    with FakeDeployApi(token=TOKEN) as api:
        for _ in range(runs):
            repo = make_repo(api.url, 1)
            reconciler(repo, "apply")
            from reconciler.config import load_settings
            from reconciler.session import Session

            settings = load_settings(repo, env={**os.environ, "BENCH_TOKEN": TOKEN})
            state = open_state(settings.state_url, repo_root=repo, env={}, read_only=True)
            rec = next(r for k, r in state.applied("bench").items() if k.kind == "Schedule")
            state.close()
            fire = spec_next_runs(rec.spec, rec.applied_at, 1)[0]
            offset = fire - timedelta(seconds=3) - datetime.now(UTC)
            firer = Firer(Session.start(settings), clock=lambda o=offset: datetime.now(UTC) + o)
            firer.start()
            api.run_arrived.clear()
            api.run_arrived.wait(30)
            firer.stop()
            store = open_executions(settings.state_url, repo_root=repo, env={})
            (ex,) = store.find(Query(limit=None))
            store.close()
            assert ex.started_at is not None and ex.fire_time is not None
            delays.append((ex.started_at - ex.fire_time).total_seconds())
    print(f"a fire's call started after its time: {spread(delays)}")
    print(f"target < 1 s: {'met' if max(delays) < 1 else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["run", "fire", "delay"])
    ap.add_argument("--latency", type=float, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--schedules", type=int, default=1000)
    ap.add_argument("--parallelism", type=int, default=50)
    a = ap.parse_args()
    if a.mode == "run":
        bench_run(a.latency or 0.05, a.runs)
    elif a.mode == "fire":
        bench_fire(a.schedules, a.latency or 0.1, a.parallelism)
    else:
        bench_delay(min(a.runs, 3))


if __name__ == "__main__":
    main()
