"""Benchmark of an eval's calls (issue 26).

    python bench/evals.py [--cases 200] [--repeat 3] [--latency 0.05] [--parallelism 16]

`reconciler eval` as a process over a dataset of --cases cases, each sent --repeat
times to a deployment whose stand-in (the http provider's, in a process of its own)
answers after --latency, --parallelism calls at once. The figure is how long the calls
took, as the eval's report says (from the first call's start to the last one's end;
loading and opening state are the command's start-up, printed beside it).
Bound: ceil(cases x repeat / parallelism) x latency. Target: <= 1.3 x the bound.
Each figure is the best of --runs (the machine may be shared); the spread is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import TOKEN, make_repo, reconciler, sh, spread, stand_in

EVAL = """---
apiVersion: reconciler/v1
kind: Eval
metadata: {name: %s}
spec:
  deployment: chat
  environments: [bench]
  dataset: evals/%s.jsonl
  repeat: %d
  minPassRate: 0.9
  parallelism: %d
"""


def add_evals(repo: Path, cases: int, repeat: int, parallelism: int) -> None:
    (repo / "evals").mkdir()
    for name, n, rep in (("big", cases, repeat), ("one", 1, 1)):
        lines = [json.dumps({"input": {"n": i}, "expect": {"succeeded": True}}) for i in range(n)]
        (repo / "evals" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        with (repo / "manifests" / "all.yaml").open("a") as f:
            f.write(EVAL % (name, name, rep, parallelism))
    sh(repo, "add", "-A")
    sh(repo, "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "evals")


def eval_json(repo: Path, name: str) -> tuple[float, dict[str, object]]:
    """`reconciler eval NAME --json` as a process: its wall time and its report (which
    says how long the calls took, from the first one's start to the last one's end)."""
    started = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "reconciler", "--repo", str(repo), "eval", name, "--env", "bench",
         "--json"],
        env={**os.environ, "BENCH_TOKEN": TOKEN}, capture_output=True, text=True,
    )  # fmt: skip
    if p.returncode != 0:
        raise SystemExit(f"reconciler eval {name} failed:\n{p.stdout}{p.stderr}")
    return time.perf_counter() - started, json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--parallelism", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with stand_in(a.latency) as url:
        repo = make_repo(url, 0)
        add_evals(repo, a.cases, a.repeat, a.parallelism)
        reconciler(repo, "apply")
        reconciler(repo, "eval", "one", "--env", "bench")  # warm the byte code
        took, calls = [], []
        for _ in range(a.runs):
            wall, doc = eval_json(repo, "big")
            took.append(float(doc["seconds"]))
            calls.append(wall)
    n = a.cases * a.repeat
    bound = math.ceil(n / a.parallelism) * a.latency
    best = min(took)
    print(f"eval of {a.cases} cases x {a.repeat}, {a.latency * 1000:.0f} ms each, parallelism "
          f"{a.parallelism}: the calls took {spread(took)} (the whole command: "
          f"{spread(calls)})")  # fmt: skip
    verdict = "met" if best <= 1.3 * bound else "NOT met"
    print(f"bound {bound:.3f} s; ratio {best / bound:.2f} (target <= 1.3): {verdict}")


if __name__ == "__main__":
    main()
