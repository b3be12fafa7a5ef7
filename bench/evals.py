"""Benchmark of an eval's calls (issue 26).

    python bench/evals.py [--cases 200] [--repeat 3] [--latency 0.05] [--parallelism 16]

`reconciler eval` as a process over a dataset of --cases cases, each sent --repeat
times to a deployment whose stand-in (the http provider's, in a process of its own)
answers after --latency, --parallelism calls at once. Its start-up (loading, opening
state, the first call) is measured with a dataset of one case and subtracted.
Bound: ceil(cases x repeat / parallelism) x latency. Target: <= 1.3 x the bound.
Each figure is the best of --runs (the machine may be shared); the spread is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import make_repo, reconciler, sh, spread, stand_in

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
        startup = [reconciler(repo, "eval", "one", "--env", "bench") for _ in range(a.runs)]
        took = [reconciler(repo, "eval", "big", "--env", "bench") for _ in range(a.runs)]
    calls = a.cases * a.repeat
    bound = math.ceil(calls / a.parallelism) * a.latency
    best = min(took) - min(startup)
    print(f"eval start-up (one case): {spread(startup)}")
    print(f"eval of {a.cases} cases x {a.repeat}, {a.latency * 1000:.0f} ms each, parallelism "
          f"{a.parallelism}: {spread(took)}")  # fmt: skip
    verdict = "met" if best <= 1.3 * bound else "NOT met"
    print(f"calls took {best:.3f} s over start-up; bound {bound:.3f} s; ratio "
          f"{best / bound:.2f} (target <= 1.3): {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
