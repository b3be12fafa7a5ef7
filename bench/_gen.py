"""Generate a realistic manifests repo of N deployment files × 4 environments."""

from __future__ import annotations

import subprocess
from pathlib import Path

ENVS = ["dev", "staging", "qa", "production"]

HEADER = """apiVersion: reconciler/v1
kind: Environment
metadata: {{name: {env}}}
spec:
  description: generated {env}
---
"""

PROVIDER = """apiVersion: reconciler/v1
kind: Provider
metadata: {name: registry}
spec:
  type: local
  environments: [dev, staging, qa, production]
  models: [gpt-4o, gpt-4o-mini, voyage-3-large]
---
apiVersion: reconciler/v1
kind: Prompt
metadata: {name: support}
spec:
  versions:
    - {version: 1.0.0, template: "You are a support agent for {{product}}."}
    - {version: 1.1.0, template: "You are a concise support agent for {{product}}."}
"""

DEPLOYMENT = """# yaml-language-server: $schema=../schemas/manifest.schema.json
apiVersion: reconciler/v1
kind: Deployment
metadata:
  name: svc-{i}
  labels: {{team: t{t}, tier: backend}}
  annotations:
    owner: someone@example.com
spec:
  environments: [dev, staging, qa, production]
  provider: registry
  model: {model}
  prompt: support@1.1.0
  options:
    temperature: 0.2
    maxTokens: 400
    topP: 0.9
    stop: ["###", "END"]
  endpoint: /svc-{i}
  scaling:
    minReplicas: 1
    maxReplicas: 4
    hardware: cpu
  env:
    LOG_LEVEL: info
    REGION: eu-west-1
    VENDOR_KEY: {{secretEnv: VENDOR_KEY}}
  timeoutSeconds: 30
  enabled: true
  risk: medium
  overrides:
    production:
      model: gpt-4o
      scaling: {{minReplicas: 2, maxReplicas: 8}}
"""


def generate(root: Path, files: int, *, model: str = "gpt-4o-mini", changed: int = 0) -> Path:
    """Write the repo (a git repo with one commit). `changed` files get another model."""
    (root / "manifests" / "deployments").mkdir(parents=True, exist_ok=True)
    (root / "manifests" / "base.yaml").write_text(
        "".join(HEADER.format(env=e) for e in ENVS) + PROVIDER
    )
    for i in range(files):
        m = "gpt-4o" if i < changed else model
        (root / "manifests" / "deployments" / f"svc-{i:05d}.yaml").write_text(
            DEPLOYMENT.format(i=i, t=i % 7, model=m)
        )
    (root / ".gitignore").write_text(".reconciler/\n")
    if not (root / ".git").exists():
        for args in (
            ["init", "-q", "-b", "main"],
            ["config", "user.email", "bench@example.com"],
            ["config", "user.name", "bench"],
        ):
            subprocess.run(["git", *args], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "generated", "--allow-empty"], cwd=root, check=True)
    return root


def measure(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit code) of a child process."""
    import os
    import resource
    import time

    full = {**os.environ, **(env or {})}
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: exec, so the RSS is the command's own
        os.chdir(cwd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.execvpe(cmd[0], cmd, full)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    _ = resource
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)
