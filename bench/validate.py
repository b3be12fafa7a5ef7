"""Benchmark: whole-process `reconciler validate` vs libyaml merely parsing the files.

    python bench/validate.py [--files 2500]     # 2,500 files × 4 environments = 10,000 instances

Target (issue 2): ratio <= 3 and peak memory under 400 MB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gen import generate, measure


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2500, help="deployment files (x4 instances)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "repo", args.files)
        paths = sorted((root / "manifests").rglob("*.yaml"))
        size = sum(p.stat().st_size for p in paths)
        parse = []
        for _ in range(args.runs):
            t = time.perf_counter()
            for p in paths:
                list(yaml.load_all(p.read_bytes(), Loader=yaml.CSafeLoader))
            parse.append(time.perf_counter() - t)
        runs = [
            measure([sys.executable, "-m", "reconciler", "validate"], root)
            for _ in range(args.runs)
        ]
        assert all(code == 0 for _, _, code in runs), runs
        best = min(w for w, _, _ in runs)
        rss = max(r for _, r, _ in runs)
        print(f"repo: {len(paths)} files, {size / 1e6:.1f} MB, {args.files * 4} instances")
        print(f"libyaml CSafeLoader parse only : {min(parse):6.2f} s")
        print(f"reconciler validate (process)  : {best:6.2f} s   peak RSS {rss:.0f} MiB")
        print(f"ratio                          : {best / min(parse):6.2f}   (target <= 3)")


if __name__ == "__main__":
    main()
