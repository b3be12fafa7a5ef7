"""A small manifests repo for `run`, `executions`, `metrics` and firing: `dev` on the
local provider, `prod` on the http provider pointed at a loopback stand-in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import Result, commit_all, init_repo, run_cli, write_files

TOKEN = "prod-registry-token-4f9a1c77"
PRICING = "  pricing: {inputPerMillionTokens: 2.5, outputPerMillionTokens: 10, currency: USD}\n"


def make_repo(path: Path, api_url: str, *, pricing: bool = True, schedules: str = "") -> Path:
    init_repo(path)
    write_files(
        path,
        {
            ".gitignore": ".reconciler/\n",
            "manifests/environments.yaml": (
                "apiVersion: reconciler/v1\nkind: Environment\nmetadata: {name: dev}\nspec: {}\n"
                "---\napiVersion: reconciler/v1\nkind: Environment\nmetadata: {name: prod}\n"
                "spec: {}\n"
            ),
            "manifests/providers.yaml": (
                "apiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: local}\n"
                "spec: {type: local, environments: [dev]}\n---\n"
                "apiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: registry}\n"
                f"spec:\n  type: http\n  environments: [prod]\n  config: {{baseUrl: '{api_url}'}}\n"
                "  credentials: {tokenEnv: REGISTRY_TOKEN}\n"
            ),
            "manifests/prompts.yaml": (
                "apiVersion: reconciler/v1\nkind: Prompt\nmetadata: {name: answer}\nspec:\n"
                "  versions:\n    - {version: 1.0.0, template: 'Answer briefly: {{question}}'}\n"
            ),
            "manifests/deployments.yaml": (
                "apiVersion: reconciler/v1\nkind: Deployment\nmetadata: {name: chat}\nspec:\n"
                "  environments: [dev, prod]\n  provider: local\n  model: gpt-4o-mini\n"
                "  prompt: answer@1.0.0\n"
                + (PRICING if pricing else "")
                + "  overrides:\n    prod: {provider: registry}\n"
            ),
            **({"manifests/schedules.yaml": schedules} if schedules else {}),
        },
    )
    commit_all(path, "manifests")
    return path


def cli(repo: Path, *args: str, env: Mapping[str, str] | None = None) -> Result:
    r = run_cli(["--repo", str(repo), *args], env={"REGISTRY_TOKEN": TOKEN, **(env or {})})
    assert "Traceback" not in r.err, r.err
    return r


def as_json(r: Result) -> Any:
    return json.loads(r.out)


@contextmanager
def run_under_way(repo: Path, api: Any) -> Iterator[None]:
    """`reconciler run chat --env prod` as a real process, its call to the stand-in
    under way while the block runs; killed with SIGKILL when it ends."""
    arrived = threading.Event()
    api.latency = 60.0  # the call is under way until the process is killed
    original = api._handle

    def handle(h: Any) -> None:
        if h.path.endswith("/run"):
            arrived.set()
        original(h)

    api._handle = handle
    p = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--repo", str(repo), "run", "chat", "--env", "prod"],
        env={**os.environ, "REGISTRY_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert arrived.wait(60)
        yield
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
