"""Benchmark: 1,000 creates against the fake deployment API with 50 ms latency.

    python bench/apply.py [--creates 1000] [--latency 0.05] [--parallelism 16]

Prints the whole `reconciler apply` wall time against the bound
ceil(creates / parallelism) × latency. Target (issue 4): <= 1.3 × the bound.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakes.deploy_api import FakeDeployApi

HEAD = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: bench}
spec: {description: bench}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: api}
spec:
  type: http
  environments: [bench]
  config: {baseUrl: "%s", timeoutSeconds: 10}
  credentials: {tokenEnv: BENCH_TOKEN}
"""

DEPLOYMENT = """---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: svc-%(i)04d}
spec:
  environments: [bench]
  provider: api
  model: gpt-4o-mini
  endpoint: /svc-%(i)04d
  options: {temperature: 0.2, maxTokens: 400}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--creates", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--parallelism", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeDeployApi(token="bench") as api:
        root = Path(tmp)
        (root / "manifests").mkdir()
        (root / "manifests" / "all.yaml").write_text(
            HEAD % api.url + "".join(DEPLOYMENT % {"i": i} for i in range(args.creates))
        )
        env = {**os.environ, "BENCH_TOKEN": "bench"}
        cmd = [sys.executable, "-m", "reconciler", "-q", "--repo", str(root)]
        t = time.perf_counter()
        subprocess.run([*cmd, "plan"], check=True, stdout=subprocess.DEVNULL, env=env)
        plan_time = time.perf_counter() - t
        api.latency = args.latency
        t = time.perf_counter()
        subprocess.run(
            [*cmd, "apply", "--parallelism", str(args.parallelism)],
            check=True, stdout=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        wall = time.perf_counter() - t
        assert len(api.objects()) == args.creates and set(api.create_count.values()) == {1}
    bound = math.ceil(args.creates / args.parallelism) * args.latency
    print(f"{args.creates} creates, latency {args.latency * 1000:.0f} ms, "
          f"parallelism {args.parallelism}")  # fmt: skip
    print(f"bound ceil(n/p) x latency : {bound:6.2f} s")
    print(f"reconciler apply (process): {wall:6.2f} s   (plan alone: {plan_time:.2f} s)")
    print(f"ratio                     : {wall / bound:6.2f}   (target <= 1.3)")


if __name__ == "__main__":
    main()
