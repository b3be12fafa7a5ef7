"""Benchmark: whole-process `reconciler plan` vs `reconciler validate`, 1% changed.

    python bench/plan.py [--files 2500]     # 2,500 files × 4 environments = 10,000 instances

The repo is applied once (state recorded), then 1% of the deployment files change.
Target (issue 3): plan <= 1.3 × validate and peak memory under 500 MB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gen import generate, measure


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2500, help="deployment files (x4 instances)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    env = {"VENDOR_KEY": "bench-secret"}
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "repo", args.files)
        subprocess.run(
            [sys.executable, "-m", "reconciler", "-q", "apply", "--parallelism", "16"],
            cwd=root, check=True, stdout=subprocess.DEVNULL, env={**_env(), **env},
        )  # fmt: skip
        generate(root, args.files, changed=max(1, args.files // 100))
        cmd = [sys.executable, "-m", "reconciler"]
        validate = [measure([*cmd, "validate"], root, env) for _ in range(args.runs)]
        plan = [measure([*cmd, "plan"], root, env) for _ in range(args.runs)]
        assert all(code == 0 for _, _, code in validate + plan), (validate, plan)
        v = min(w for w, _, _ in validate)
        p = min(w for w, _, _ in plan)
        rss = max(r for _, r, _ in plan)
        print(f"repo: {args.files} files, {args.files * 4} instances, 1% changed")
        print(f"reconciler validate (process) : {v:6.2f} s")
        print(f"reconciler plan (process)     : {p:6.2f} s   peak RSS {rss:.0f} MiB")
        print(f"ratio plan / validate         : {p / v:6.2f}   (target <= 1.3)")


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


if __name__ == "__main__":
    main()
