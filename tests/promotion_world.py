"""A repo for verified promotion: `staging` and `production` on the local provider (it
answers by rendering the prompt template), a smoke check in both, and production
promoted from staging after a soak."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import Result, commit_all, init_repo, run_cli, write_files

LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
needs_faketime = pytest.mark.skipif(
    not LIB.exists() or shutil.which("faketime") is None, reason="libfaketime is not installed"
)

ENVIRONMENTS = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: staging}
---
apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
spec:
  promotion: {from: staging, soak: 2h}
"""
CHECK = """apiVersion: reconciler/v1
kind: Check
metadata: {name: smoke}
spec:
  deployment: chat
  environments: [staging, production]
  requests:
    - input: {question: 'refund?'}
      expect: {contains: [briefly]}
"""


def make_repo(path: Path) -> Path:
    init_repo(path)
    write_files(
        path,
        {
            ".gitignore": ".reconciler/\n",
            "manifests/environments.yaml": ENVIRONMENTS,
            "manifests/providers.yaml": (
                "apiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: local}\n"
                "spec: {type: local, environments: [staging, production]}\n"
            ),
            "manifests/prompts.yaml": (
                "apiVersion: reconciler/v1\nkind: Prompt\nmetadata: {name: answer}\nspec:\n"
                "  versions:\n"
                "    - {version: 1.0.0, template: 'Answer briefly: {{question}}'}\n"
                "    - {version: 1.1.0, template: 'Answer briefly and kindly: {{question}}'}\n"
            ),
            "manifests/deployments.yaml": (
                "apiVersion: reconciler/v1\nkind: Deployment\nmetadata: {name: chat}\nspec:\n"
                "  environments: [staging, production]\n  provider: local\n"
                "  model: gpt-4o-mini\n  prompt: answer@1.0.0\n"
            ),
            "manifests/checks.yaml": CHECK,
        },
    )
    commit_all(path, "manifests")
    return path


def at(when: str) -> dict[str, str]:
    """The process's own clock starts at `when` (UTC), through libfaketime."""
    return {"LD_PRELOAD": str(LIB), "FAKETIME": f"@{when}", "TZ": "UTC"}


def cli(repo: Path, *args: str, env: Mapping[str, str] | None = None) -> Result:
    r = run_cli(["--repo", str(repo), *args], env=dict(env or {}))
    assert "Traceback" not in r.err, r.err
    return r


def as_json(r: Result) -> Any:
    return json.loads(r.out)
