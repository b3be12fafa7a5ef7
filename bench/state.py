"""Benchmark: recording an apply of 25,000 changes in one environment, one
`record_change` each (as the executor does), and reading one key back per change.

    python bench/state.py [--changes 25000] [--url sqlite:///state.db]

Prints record_change throughput and the cost of a single-key `applied()` (the executor
asks per change). The URL is relative to a fresh temporary directory unless absolute.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from reconciler.instances import InstanceKey
from reconciler.state import open_state
from reconciler.state.base import AppliedRecord, ChangeRecord, RunRecord, StateStore

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SPEC = {
    "model": "gpt-4o-mini",
    "endpoint": "/svc",
    "options": {"temperature": 0.2, "maxTokens": 400},
    "env": {"API_KEY": {"secretEnv": "API_KEY"}},
    "scaling": {"min": 1, "max": 4},
}


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=25_000)
    ap.add_argument("--url", default="sqlite:///state.db")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_state(args.url, repo_root=Path(tmp), env={})
        elapsed = record(store, args.changes)
        reads = single_key_reads(store, args.changes)
        store.close()
    print(f"state: {args.url}")
    print(
        f"record_change: {args.changes} changes in {elapsed:.2f} s = "
        f"{args.changes / elapsed:,.0f} changes/s ({elapsed / args.changes * 1e6:.0f} us each)"
    )
    print(
        f"applied(keys=[k]): median {statistics.median(reads) * 1e6:.0f} us, "
        f"max {max(reads) * 1e6:.0f} us over {len(reads)} reads"
    )


if __name__ == "__main__":
    main()
