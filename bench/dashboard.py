"""Benchmark: the dashboard's page and API response times on 10,000 instances and 1,000
runs, through the real server (`reconciler serve`, uvicorn on 127.0.0.1).

    python bench/dashboard.py [--files 2500] [--runs 1000] [--requests 40]

A generated repo (`--files` deployments and `--schedules` schedules, × 4 environments:
10,000 instances by default) is applied once through the CLI (the local provider);
further runs, each changing a few instances with a field diff, are recorded through
the StateStore API, as the executor records them. A later commit changes 100
deployments (pending in the plan) and 100 staging objects are edited in the registry
(drift). Then the server starts, and every page and API document is requested
`--requests` times, one at a time. Prints the median and p95 per URL, and how long the
background refresh takes (what a request never waits for). The target: every page
under 300 ms.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from _gen import ENVS, generate

from reconciler.instances import InstanceKey
from reconciler.state import open_state
from reconciler.state.base import ChangeRecord, RunRecord

ROOT = Path(__file__).resolve().parent.parent
SERVE = ("--port", "0", "--refresh", "1h")
ENV = {"VENDOR_KEY": "v3nd0r-secret-bench", "RECONCILER_DEPLOY_BRANCH": "main"}


def cli(repo: Path, *args: str) -> None:
    env = {**os.environ, **ENV}
    subprocess.run(
        [sys.executable, "-m", "reconciler", "-q", "--repo", str(repo), *args],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def record_runs(repo: Path, count: int) -> None:
    """`count` more runs, round-robin over the environments, 1-5 changes each."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    store = open_state("sqlite:///.reconciler/state.db", repo_root=repo, env={})
    try:
        applied = {env: sorted(store.applied(env).values(), key=lambda r: r.name) for env in ENVS}
        start = datetime.now(UTC) - timedelta(days=count)
        for i in range(count):
            env = ENVS[i % len(ENVS)]
            run = RunRecord(
                f"bench-{i:05d}", env, head, "apply", start + timedelta(days=i), None,
                "running", pull_request=i + 1, author="dave", approvers=["alice", "bob"],
            )  # fmt: skip
            store.begin_run(run)
            with store.lock(env, run.id):
                for j in range(1 + i % 5):
                    rec = applied[env][(i * 7 + j * 13) % len(applied[env])]
                    diff = [{"path": "options.temperature", "before": 0.2, "after": 0.2}]
                    change = ChangeRecord(
                        InstanceKey(env, rec.kind, rec.name), "update", "applied", None,
                        rec.provider_id, rec.spec_hash, rec.spec_hash, run.started_at, diff,
                    )  # fmt: skip
                    store.record_change(run.id, change, rec, None)
            store.finish_run(run.id, "applied")
    finally:
        store.close()


def write_schedules(repo: Path, count: int) -> None:
    zones = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo")
    docs = [
        f"apiVersion: reconciler/v1\nkind: Schedule\nmetadata: {{name: job-{i:04d}}}\n"
        f"spec:\n  environments: [{', '.join(ENVS)}]\n  deployment: svc-{i * 9}\n"
        f'  cron: "{i % 60} */2 * * *"\n  timezone: {zones[i % len(zones)]}\n'
        for i in range(count)
    ]
    (repo / "manifests").mkdir(parents=True, exist_ok=True)
    (repo / "manifests" / "schedules.yaml").write_text("---\n".join(docs))


def drift(repo: Path, count: int) -> None:
    """Someone edits `count` staging deployments in the local registry."""
    db = sqlite3.connect(repo / ".reconciler" / "local-registry.db")
    with db:
        db.execute(
            "UPDATE objects SET body = json_set(body, '$.options.temperature', 0.9) "
            "WHERE environment = 'staging' AND kind = 'Deployment' AND name IN "
            f"(SELECT name FROM objects WHERE environment = 'staging' LIMIT {count})"
        )
    db.close()


def start_server(repo: Path) -> tuple[subprocess.Popen[str], str, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--repo", str(repo), "serve", *SERVE],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "dashboard on " not in line:
        raise SystemExit(f"serve failed: {line}{proc.stderr.read()}")
    base = line.split("dashboard on ", 1)[1].split()[0]
    while not httpx.get(base + "healthz", timeout=30).json()["ready"]:
        time.sleep(0.2)
    return proc, base, time.perf_counter() - started


def measure(client: httpx.Client, url: str, n: int) -> tuple[float, float, int]:
    times = []
    size = 0
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(url)
        times.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise SystemExit(f"{url}: {r.status_code} {r.text[:200]}")
        size = len(r.content)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return statistics.median(times), p95, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2250, help="deployments (× 4 environments)")
    ap.add_argument("--schedules", type=int, default=250, help="schedules (× 4 environments)")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=40)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        write_schedules(repo, args.schedules)
        generate(repo, args.files)
        t = time.perf_counter()
        cli(repo, "apply")
        count = (args.files + args.schedules) * len(ENVS)
        print(f"setup: apply of {count} instances {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        record_runs(repo, args.runs - len(ENVS))
        print(f"setup: {args.runs - len(ENVS)} more runs recorded {time.perf_counter() - t:.1f} s")
        generate(repo, args.files, changed=100)
        drift(repo, 100)
        proc, base, ready = start_server(repo)
        try:
            report(base, ready, args.requests)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def report(base: str, ready: float, n: int) -> None:
    print(f"serve: first snapshot (load, plan, live reads, verdicts) ready in {ready:.1f} s")
    with httpx.Client(base_url=base, timeout=60) as client:
        runs = client.get("/api/history?limit=1000").json()
        newest, oldest = runs[0]["id"], runs[-1]["id"]
        urls = [
            "/",
            "/matrix",
            "/matrix?page=25",
            "/matrix?q=svc-0123",
            "/matrix?only=changed",
            "/history",
            "/history?env=production&page=5",
            f"/runs/{newest}",
            f"/runs/{oldest}",
            f"/runs/{runs[-4]['id']}?page=5",
            "/schedules",
            "/schedules?env=qa&page=2",
            "/drift",
            "/healthz",
            "/api/overview",
            "/api/status",
            "/api/plan",
            "/api/drift",
            "/api/schedules",
            "/api/history",
            "/api/history?env=production&limit=200",
            f"/api/runs/{oldest}",
        ]
        print(f"{'url':<40} {'median':>9} {'p95':>9} {'size':>11}   ({n} requests each)")
        worst = 0.0
        for url in urls:
            med, p95, size = measure(client, url, n)
            worst = max(worst, p95) if not url.startswith("/api/") else worst
            print(f"{url:<40} {med * 1000:>7.1f}ms {p95 * 1000:>7.1f}ms {size:>9,} B")
        print(f"slowest page p95: {worst * 1000:.1f} ms (target < 300 ms)")


if __name__ == "__main__":
    main()
