"""Agents at scale: throughput with 1, 2 and 4 agents sharing one PostgreSQL state by
dynamic assignment, and how long the survivors take to own a killed agent's
environments.

    python bench/agents.py                      # 200 environments x 50 instances
    python bench/agents.py --quick              # 40 x 10, for a quick look
    python bench/agents.py --agents 1 2 4 --window 20 --latency 0.1

The provider is the `http` one against the loopback stand-in of a deployment API
(tests/fakes/deploy_api.py, a process of its own) answering every request after
--latency seconds. An environment's first pass creates each instance (one request:
the state says it is new) and then reads each back (the drift check, due at start),
so one agent's bound is workers x parallelism / (2 x latency) instances a second
(--workers environments at once, --parallelism requests at once in each).

Throughput is the number of instances recorded applied during a --window of seconds
that begins once every agent sees all the others (and a first instance was applied),
divided by the window. Targets (issue 29): >= 1.8x at 2 agents, >= 3.2x at 4.
Takeover: with the last count of agents running, one is killed (SIGKILL); the time
until the survivors' /readyz own every environment, in seconds and in heartbeat
periods. Target: <= 3 heartbeat periods.

PostgreSQL: RECONCILER_TEST_POSTGRES_URL, else a throwaway cluster of the
distribution's server (tests/pgserver.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import pgserver  # noqa: E402

TOKEN = "bench-agents-token"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def manifests(url: str, envs: int, instances: int, parallelism: int) -> dict[str, str]:
    names = [f"env-{i:03d}" for i in range(envs)]
    listed = ", ".join(names)
    files = {
        "reconciler.yaml": f"parallelism: {parallelism}\n",
        ".gitignore": ".reconciler/\n*.db\n",
        "manifests/provider.yaml": (
            "apiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: api}\nspec:\n"
            f"  type: http\n  environments: [{listed}]\n"
            f'  config: {{baseUrl: "{url}", timeoutSeconds: 30, retries: 2}}\n'
            "  credentials: {tokenEnv: BENCH_TOKEN}\n"
        ),
    }
    for n in names:
        files[f"manifests/envs/{n}.yaml"] = (
            f"apiVersion: reconciler/v1\nkind: Environment\nmetadata: {{name: {n}}}\n"
            "spec:\n  sync: {auto: true, interval: 1h}\n"
        )
    for i in range(instances):
        files[f"manifests/svc/svc-{i:03d}.yaml"] = (
            "apiVersion: reconciler/v1\nkind: Deployment\n"
            f"metadata: {{name: svc-{i:03d}}}\nspec:\n  environments: [{listed}]\n"
            f"  provider: api\n  model: gpt-4o-mini\n  endpoint: /svc-{i:03d}\n"
        )
    return files


class Agent:
    def __init__(self, remote: Path, clone: Path, state: str, args: argparse.Namespace) -> None:
        env = {**os.environ, "BENCH_TOKEN": TOKEN, "RECONCILER_REMOTE": str(remote)}
        prof = os.environ.get("BENCH_PROFILE")
        profile = ["-m", "cProfile", "-o", f"{prof}.{clone.name}"] if prof else []
        argv = [
            sys.executable, *profile, "-m", "reconciler", "--state", state, "--log-format", "json",
            "agent", "--clone", str(clone), "--port", "0", "--no-dashboard", "--dynamic",
            "--heartbeat", f"{args.heartbeat}s", "--workers", str(args.workers),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        self.port: int | None = None
        self.lines: list[str] = []
        self._found = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._found.wait(120):
            raise RuntimeError("the agent did not start:\n" + "\n".join(self.lines[-20:]))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if self.port is None and '"agent started"' in line:
                self.port = int(json.loads(line)["port"])
                self._found.set()
        self._found.set()

    def ready(self) -> dict[str, Any]:
        r = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=10)
        return dict(r.json())

    def owned(self) -> set[str]:
        envs = self.ready()["environments"]
        return {e for e, v in envs.items() if v["owned"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def applied(admin: str, schema: str) -> int:
    with psycopg.connect(admin, autocommit=True) as conn:
        try:
            row = conn.execute(
                f'SELECT count(*) FROM "{schema}".reconciler_applied'  # type: ignore[arg-type]
            ).fetchone()
        except psycopg.errors.UndefinedTable:  # no run has made the tables yet
            return 0
    return int(row[0]) if row else 0


def wait(check: Any, what: str, timeout: float, step: float = 0.1) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(step)
    raise RuntimeError(f"{what}: not within {timeout} s")


def start_api(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.deploy_api", "--port", "0", "--latency",
         str(latency), "--token", TOKEN],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not re.match(r"^http://127\.0\.0\.1:\d+", url):
        raise RuntimeError(f"the deployment API stand-in did not start: {url!r}")
    return proc, url


def one_config(
    n: int, pg: pgserver.PgServer, tmp: Path, args: argparse.Namespace, takeover: bool
) -> dict[str, float]:
    api, url = start_api(args.latency)
    total = args.envs * args.instances
    try:
        root = tmp / f"n{n}"
        remote = root / "remote.git"
        remote.mkdir(parents=True)
        git(remote, "init", "-q", "--bare", "-b", "main")
        work = root / "work"
        work.mkdir()
        git(work, "init", "-q", "-b", "main")
        for path, text in manifests(url, args.envs, args.instances, args.parallelism).items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(text)
        git(work, "add", "-A")
        git(work, "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qm", "bench")
        git(work, "push", "-q", str(remote), "main")
        schema = "b_" + secrets.token_hex(5)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
        state = pgserver.with_search_path(pg.url, schema)
        agents = [Agent(remote, root / f"clone{i}", state, args) for i in range(n)]
        try:
            wait(
                lambda: all(len(a.ready().get("members", {}).get("live", [])) == n for a in agents),
                "every agent sees the others",
                120,
            )
            wait(lambda: applied(pg.url, schema) > 0, "a first instance applied", 300)
            pids = [a.proc.pid for a in agents]
            cpu0 = sum(map(cpu_seconds, pids)), cpu_seconds(api.pid)
            before, t0 = applied(pg.url, schema), time.monotonic()
            after, t1 = before, t0
            while t1 - t0 < args.window and after < total:  # ends early when all is done
                time.sleep(0.25)
                after, t1 = applied(pg.url, schema), time.monotonic()
            rate = (after - before) / (t1 - t0)
            cpu1 = sum(map(cpu_seconds, pids)), cpu_seconds(api.pid)
            out = {"rate": rate, "applied": float(after), "total": float(total)}
            out["agents_cpu"] = (cpu1[0] - cpu0[0]) / (t1 - t0)
            out["api_cpu"] = (cpu1[1] - cpu0[1]) / (t1 - t0)
            with psycopg.connect(pg.url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT avg(extract(epoch FROM finished_at - started_at)) "  # type: ignore[arg-type]
                    f"FROM \"{schema}\".reconciler_runs WHERE outcome = 'applied'"
                ).fetchone()
            out["run"] = float(row[0]) if row and row[0] is not None else 0.0
            if takeover and n > 1:
                victim = max(agents, key=lambda a: len(a.owned()))
                moved = victim.owned()
                survivors = [a for a in agents if a is not victim]
                victim.proc.kill()
                killed = time.monotonic()
                wait(
                    lambda: set().union(*(a.owned() for a in survivors)) >= moved,
                    "the survivors own the killed agent's environments",
                    120,
                    step=0.05,
                )
                out["takeover"] = time.monotonic() - killed
                out["moved"] = float(len(moved))
            return out
        finally:
            for a in agents:
                a.stop()
    finally:
        api.terminate()
        api.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", type=int, default=200)
    p.add_argument("--instances", type=int, default=50, help="per environment")
    p.add_argument("--latency", type=float, default=0.1, help="seconds per API request")
    p.add_argument("--agents", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--workers", type=int, default=2, help="environments per agent at once")
    p.add_argument("--parallelism", type=int, default=4, help="changes per run at once")
    p.add_argument("--window", type=float, default=20.0, help="seconds measured")
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--quick", action="store_true", help="40 environments x 10, 10 s windows")
    args = p.parse_args()
    if args.quick:
        args.envs, args.instances, args.window = 40, 10, 10.0
    bound = args.workers * args.parallelism / (2 * args.latency)
    print(
        f"{args.envs} environments x {args.instances} instances, {args.latency * 1000:.0f} ms "
        f"per request (http stand-in), {args.workers} workers x {args.parallelism} changes "
        f"per agent (bound ~{bound:.0f} creates/s per agent), window {args.window:g} s"
    )
    with pgserver.server() as pg, tempfile.TemporaryDirectory() as tmp:
        base: float | None = None
        for i, n in enumerate(args.agents):
            r = one_config(n, pg, Path(tmp), args, takeover=i == len(args.agents) - 1)
            base = base or r["rate"]
            line = (
                f"{n} agent(s): {r['rate']:7.1f} instances/s  ({r['rate'] / base:.2f}x one; "
                f"{r['rate'] / (n * bound):.0%} of the bound; a run takes {r['run']:.2f} s; "
                f"CPU: agents {r['agents_cpu']:.2f} cores, API stand-in {r['api_cpu']:.2f})"
            )
            print(line, flush=True)
            if "takeover" in r:
                t = r["takeover"]
                print(
                    f"takeover after SIGKILL of one of {n}: {t:.2f} s = "
                    f"{t / args.heartbeat:.1f} heartbeat periods ({int(r['moved'])} environments "
                    "moved)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
