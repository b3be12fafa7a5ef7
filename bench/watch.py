"""Benchmark: `reconciler watch` with 10,000 instances, save → new plan printed.

    python bench/watch.py [--files 2500] [--saves 10]

Starts the real CLI, waits for its first plan, then edits one deployment file at a
time and measures until the next "planned in" line appears. Target (issue 8): < 300 ms.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gen import generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2500, help="deployment files (x4 instances)")
    ap.add_argument("--saves", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "repo", args.files)
        # a realistic loop: dev already applied, so each plan shows the edit only
        subprocess.run(
            [sys.executable, "-m", "reconciler", "-q", "apply", "--env", "dev"],
            cwd=root, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "-q", "watch", "--env", "dev"],
            cwd=root, stdout=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(x) for x in proc.stdout or []], daemon=True
        ).start()

        def wait_plan(timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if "planned in" in lines.get(timeout=0.05):
                        return
                except queue.Empty:
                    continue
            raise SystemExit("watch printed no plan in time")

        t = time.perf_counter()
        wait_plan(120)
        print(f"initial load + plan: {time.perf_counter() - t:.2f} s")
        times = []
        for i in range(args.saves):
            target = root / "manifests" / "deployments" / f"svc-{i:05d}.yaml"
            text = target.read_text().replace("temperature: 0.2", f"temperature: 0.{i + 3}")
            time.sleep(0.3)  # let the previous pass settle; not part of the figure
            t = time.perf_counter()
            target.write_text(text)
            wait_plan(30)
            times.append((time.perf_counter() - t) * 1000)
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        print(f"save → new plan, {args.files * 4} instances, {args.saves} saves:")
        print(
            f"  median {statistics.median(times):.0f} ms, max {max(times):.0f} ms (target < 300 ms)"
        )


if __name__ == "__main__":
    main()
