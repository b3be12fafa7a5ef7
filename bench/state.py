"""Benchmarks of the state backends.

One process (default): recording an apply of 25,000 changes in one environment, one
`record_change` each (as the executor does), reading one key back per change, and the
lock check the executor makes before each provider write (`check_lock`).

    python bench/state.py [--changes 25000] [--url sqlite:///state.db | postgresql]

Many processes: `--processes 20` runs 20 `reconciler apply --env eNN` processes at once,
one per environment, each creating 100 deployments through the fake deployment API with
10 ms latency per request, against PostgreSQL (as the server is configured, and with
synchronous_commit off, which returns before the WAL is flushed) and SQLite (one file);
checks that no record was lost or duplicated (serials, applied records, runs, changes and
the API's objects) and prints the wall time and records per second of each side by side.

    python bench/state.py --processes 20 [--per-process 100] [--latency 0.01]
                          [--parallelism 4] [--postgres-url URL]

`postgresql` as --url, or no --postgres-url, starts a throwaway cluster with the
distribution's server (fsync on), like the tests do. URLs are relative to a fresh
temporary directory unless absolute.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes.deploy_api import FakeDeployApi
from pgserver import PgServer, server

from reconciler.instances import InstanceKey
from reconciler.state import mask_url, open_state
from reconciler.state.base import AppliedRecord, ChangeRecord, RunRecord, StateStore

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SPEC = {
    "model": "gpt-4o-mini",
    "endpoint": "/svc",
    "options": {"temperature": 0.2, "maxTokens": 400},
    "env": {"API_KEY": {"secretEnv": "API_KEY"}},
    "scaling": {"min": 1, "max": 4},
}
TOKEN = "bench-token"


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[Callable[[], str]]:
    """Makes a fresh database's URL on `url`'s server, or on a throwaway durable cluster."""
    if url:
        pg = PgServer(url)
        yield pg.fresh_database
        return
    with server(durable=True) as pg:
        yield pg.fresh_database


def no_commit_flush(url: str) -> str:
    """`url` with synchronous_commit off: commits return before the WAL is flushed."""
    return f"{url}{'&' if '?' in url else '?'}options=-csynchronous_commit%3Doff"


# -- one process -----------------------------------------------------------------------


def record(store: StateStore, n: int) -> float:
    store.begin_run(RunRecord("r1", "bench", "c1", "apply", T0, None, "running"))
    started = time.perf_counter()
    with store.lock("bench", "r1"):
        for i in range(n):
            key = InstanceKey("bench", "Deployment", f"svc-{i:05d}")
            change = ChangeRecord(key, "create", "applied", None, f"id-{i}", None, f"h{i}")
            applied = AppliedRecord(
                "bench", "Deployment", key.name, "api", f"id-{i}", {**SPEC, "name": key.name},
                f"h{i}", {"API_KEY": "hmac-sha256:0123456789abcdef0123456789abcdef"}, "c1",
                "r1", T0,
            )  # fmt: skip
            store.record_change("r1", change, applied, None)
    return time.perf_counter() - started


def single_key_reads(store: StateStore, n: int) -> list[float]:
    times = []
    for i in range(0, n, max(n // 2000, 1)):
        key = InstanceKey("bench", "Deployment", f"svc-{i:05d}")
        started = time.perf_counter()
        assert key in store.applied("bench", keys=[key])
        times.append(time.perf_counter() - started)
    return times


def lock_checks(store: StateStore, n: int = 2000) -> list[float]:
    times = []
    with store.lock("bench", "r2"):
        for _ in range(n):
            started = time.perf_counter()
            store.check_lock("bench")
            times.append(time.perf_counter() - started)
    return times


def one_process(url: str, changes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_state(url, repo_root=Path(tmp), env={})
        elapsed = record(store, changes)
        reads = single_key_reads(store, changes)
        checks = lock_checks(store)
        store.close()
    print(f"state: {mask_url(url)}")
    print(
        f"record_change: {changes} changes in {elapsed:.2f} s = "
        f"{changes / elapsed:,.0f} changes/s ({elapsed / changes * 1e6:.0f} us each)"
    )
    print(
        f"applied(keys=[k]): median {statistics.median(reads) * 1e6:.0f} us, "
        f"max {max(reads) * 1e6:.0f} us over {len(reads)} reads"
    )
    print(
        f"check_lock (before each provider write): median "
        f"{statistics.median(checks) * 1e6:.0f} us, max {max(checks) * 1e6:.0f} us over "
        f"{len(checks)} checks"
    )


# -- many processes --------------------------------------------------------------------

PROVIDER = """apiVersion: reconciler/v1
kind: Provider
metadata: {name: api}
spec:
  type: http
  environments: [%(envs)s]
  config: {baseUrl: "%(url)s", timeoutSeconds: 30}
  credentials: {tokenEnv: BENCH_TOKEN}
"""
ENVIRONMENT = """---
apiVersion: reconciler/v1
kind: Environment
metadata: {name: %s}
spec: {description: bench}
"""
DEPLOYMENT = """---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: svc-%(i)04d}
spec:
  environments: [%(envs)s]
  provider: api
  model: gpt-4o-mini
  endpoint: /svc-%(i)04d
  options: {temperature: 0.2, maxTokens: 400}
"""


@dataclass(frozen=True)
class Figures:
    backend: str
    wall: float
    records: int
    #: The longest run as recorded (lock held, begin_run to finish_run).
    longest_run: float


def make_repo(root: Path, api_url: str, envs: list[str], per_env: int) -> None:
    names = ", ".join(envs)
    text = PROVIDER % {"envs": names, "url": api_url}
    text += "".join(ENVIRONMENT % e for e in envs)
    text += "".join(DEPLOYMENT % {"i": i, "envs": names} for i in range(per_env))
    (root / "manifests").mkdir(parents=True)
    (root / "manifests" / "all.yaml").write_text(text)
    (root / ".gitignore").write_text(".reconciler/\n")
    git = ["git", "-C", str(root), "-c", "user.name=b", "-c", "user.email=b@b"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench"], check=True)


def run_applies(root: Path, url: str, envs: list[str], parallelism: int) -> float:
    """All applies at once; the wall time until the last one exited."""
    env = {**os.environ, "BENCH_TOKEN": TOKEN}
    env.pop("CI", None)
    cmd = [sys.executable, "-m", "reconciler", "-q", "--repo", str(root), "--state", url]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*cmd, "apply", "--env", e, "--parallelism", str(parallelism)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for e in envs
    ]
    for p, e in zip(procs, envs, strict=True):
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"apply --env {e} exited {p.returncode}: {err.strip()[-2000:]}")
    return time.perf_counter() - started


def verify(
    root: Path, url: str, api: FakeDeployApi, envs: list[str], per_env: int
) -> tuple[int, float]:
    """No record lost or duplicated: every environment has exactly its records. Returns
    the records and the longest run (begin to finish, as recorded)."""
    store = open_state(url, repo_root=root, env={}, read_only=True)
    try:
        total, longest = 0, 0.0
        for e in envs:
            runs = store.runs(e)
            assert [r.outcome for r in runs] == ["applied"], (e, [r.outcome for r in runs])
            changes = runs[0].changes
            names = [c.key.name for c in changes]
            assert len(names) == len(set(names)) == per_env, (e, len(names), len(set(names)))
            assert {c.outcome for c in changes} == {"applied"}
            assert store.serial(e) == per_env and len(store.applied(e)) == per_env
            assert store.lock_holder(e) is None
            total += len(changes)
            assert runs[0].finished_at is not None
            longest = max(longest, (runs[0].finished_at - runs[0].started_at).total_seconds())
    finally:
        store.close()
    assert len(api.objects()) == len(envs) * per_env
    assert set(api.create_count.values()) == {1}, "a deployment was created twice"
    return total, longest


def many_processes(
    backend: str, url: str, processes: int, per_env: int, latency: float, parallelism: int
) -> Figures:
    envs = [f"e{i:02d}" for i in range(processes)]
    with tempfile.TemporaryDirectory() as tmp, FakeDeployApi(token=TOKEN) as api:
        root = Path(tmp) / "repo"
        make_repo(root, api.url, envs, per_env)
        api.latency = latency
        wall = run_applies(root, url, envs, parallelism)
        records, longest = verify(root, url, api, envs, per_env)
    return Figures(backend, wall, records, longest)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=25_000)
    ap.add_argument("--url", default="sqlite:///state.db")
    ap.add_argument("--processes", type=int, default=0)
    ap.add_argument("--per-process", type=int, default=100)
    ap.add_argument("--latency", type=float, default=0.01)
    ap.add_argument("--parallelism", type=int, default=4)
    ap.add_argument("--postgres-url", default=os.environ.get("RECONCILER_BENCH_POSTGRES_URL"))
    args = ap.parse_args()
    if not args.processes:
        if args.url == "postgresql":
            with postgres(args.postgres_url) as fresh:
                one_process(fresh(), args.changes)
        else:
            one_process(args.url, args.changes)
        return
    shape = (args.processes, args.per_process, args.latency, args.parallelism)
    with postgres(args.postgres_url) as fresh:
        figures = [
            many_processes("postgresql", fresh(), *shape),
            many_processes("postgresql, synchronous_commit=off", no_commit_flush(fresh()), *shape),
        ]
    figures.append(many_processes("sqlite", "sqlite:///.reconciler/state.db", *shape))
    print(
        f"{args.processes} apply processes x {args.per_process} creates, provider latency "
        f"{args.latency * 1000:.0f} ms, parallelism {args.parallelism}: "
        "no record lost or duplicated"
    )
    print(f"{'backend':<36}{'wall s':>8}{'records':>9}{'records/s':>11}{'longest run s':>15}")
    for f in figures:
        print(
            f"{f.backend:<36}{f.wall:8.2f}{f.records:9d}{f.records / f.wall:11.0f}"
            f"{f.longest_run:15.2f}"
        )


if __name__ == "__main__":
    main()
