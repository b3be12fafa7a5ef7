"""Benchmark: whole-process `reconciler plan` vs `reconciler validate`.

    python bench/plan.py [--files 2500]           # 2,500 files × 4 environments = 10,000 instances
    python bench/plan.py --first [--files 2500]   # the first plan: nothing applied, all creates

Default: the repo is applied once (state recorded), then 1% of the deployment files
change. Target (issue 3): plan <= 1.3 × validate and peak memory under 500 MB.

`--first`: nothing is applied, so every instance is a create and the human plan prints
every field (10,000 instances: ~150,000 lines). Target (issue 14): plan <= 1.3 × validate.
Output goes to /dev/null (not a terminal: the plain-text renderer).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gen import generate, measure


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2500, help="deployment files (x4 instances)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--first", action="store_true", help="nothing applied: all creates")
    args = ap.parse_args()
    env = {"VENDOR_KEY": "bench-secret"}
    if args.first:
        first_plan(args.files, args.runs, env)
        return
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


def first_plan(files: int, runs: int, env: dict[str, str]) -> None:
    """The first plan of a repo: every instance a create, the human plan on stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "repo", files)
        cmd = [sys.executable, "-m", "reconciler"]
        lines = subprocess.run(
            [*cmd, "plan"], cwd=root, check=True, capture_output=True, text=True,
            env={**_env(), **env},
        ).stdout.count("\n")  # fmt: skip
        validate: list[tuple[float, float]] = []
        plan: list[tuple[float, float]] = []
        for _ in range(runs):  # interleaved: a machine slowing down weighs on both alike
            validate.append(_timed([*cmd, "validate"], root, env))
            plan.append(_timed([*cmd, "plan"], root, env))
        v, p = min(w for w, _ in validate), min(w for w, _ in plan)
        vc, pc = min(c for _, c in validate), min(c for _, c in plan)
        print(f"repo: {files} files, {files * 4} instances, first plan (all creates)")
        print(f"plan output: {lines} lines (human, stdout not a terminal)")
        for name, runs_ in (("validate", validate), ("plan", plan)):
            wall, cpu = _list(w for w, _ in runs_), _list(c for _, c in runs_)
            print(f"{name:<8} wall s: {wall}   cpu s: {cpu}")
        print(f"ratio plan / validate (best wall) : {p / v:5.2f}   (target <= 1.3)")
        print(f"ratio plan / validate (best cpu)  : {pc / vc:5.2f}")
        mid = statistics.median(p / v for (p, _), (v, _) in zip(plan, validate, strict=True))
        print(f"ratio plan / validate (median of pairs): {mid:5.2f}")


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall, cpu) seconds of a child process, stdout to /dev/null. CPU time (user +
    system) is steadier than wall time on a shared machine."""
    import os
    import time

    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.chdir(cwd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.execvpe(cmd[0], cmd, {**os.environ, **env})
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    assert os.waitstatus_to_exitcode(status) == 0, cmd
    return wall, usage.ru_utime + usage.ru_stime


def _list(values: Iterable[float]) -> str:
    return ", ".join(f"{v:5.2f}" for v in values)


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


if __name__ == "__main__":
    main()
