"""The README's commands work as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE, ROOT

BIN = str(Path(sys.executable).parent)
README = (ROOT / "README.md").read_text()
pytestmark = pytest.mark.slow  # the guide in a shell, a process per command


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def run(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI"))}
    env.update(
        PATH=f"{BIN}:{os.environ['PATH']}",
        GIT_AUTHOR_NAME="New User",
        GIT_AUTHOR_EMAIL="new@example.com",
        GIT_COMMITTER_NAME="New User",
        GIT_COMMITTER_EMAIL="new@example.com",
    )
    return subprocess.run(
        ["bash", "-e", "-x", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_first_command_runs_the_example(tmp_path: Path) -> None:
    first = sh_blocks(README)[0].strip()
    # the install part is what this test environment already did
    install, _, rest = first.partition(" && .venv/bin/reconciler plan")
    assert install.startswith("python3 -m venv .venv") and "pip install" in install
    script = ("reconciler plan" + rest).replace(".venv/bin/", "")
    shutil.copytree(EXAMPLE, tmp_path / "manifests")
    r = run(script, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dev: applied" in r.stdout and "staging: applied" in r.stdout


def test_second_command_is_what_ci_runs() -> None:
    second = sh_blocks(README)[1].strip()
    assert second.endswith("pytest -n 2")
    assert "pytest -n 2" in (ROOT / ".ci" / "run").read_text()


def test_ten_minute_guide(tmp_path: Path) -> None:
    section = README.split("## Ten-minute guide", 1)[1].split("\n## ", 1)[0]
    blocks = sh_blocks(section)
    assert len(blocks) >= 4
    r = run("\n".join(blocks), tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Traceback" not in out
    assert "rollback" in r.stdout and "maxTokens" in r.stdout
    assert "production: applied" in r.stdout and "approved by bob" in r.stdout
