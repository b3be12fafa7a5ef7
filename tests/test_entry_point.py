"""The `reconciler` command and `python -m reconciler` start through one entry point,
which loads the CLI with the cyclic GC paused and then freezes what it loaded (start-up
objects live as long as the process). Counted in objects, never timed."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import gc, sys
from reconciler.__main__ import main
sys.argv = ["reconciler", "--help"]
try:
    main()
except SystemExit as e:
    code = e.code
print(code, gc.isenabled(), gc.get_freeze_count())
"""


def test_the_console_script_is_the_entry_point() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"reconciler": "reconciler.__main__:main"}


def test_start_up_leaves_the_gc_on_and_the_loaded_modules_frozen() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    code, enabled, frozen = out.splitlines()[-1].split()
    assert (code, enabled) == ("0", "True")
    assert int(frozen) > 10_000  # typer, pydantic, git, httpx... out of the GC's view


def test_python_dash_m_runs_the_same_entry_point(tmp_path: Path) -> None:
    (tmp_path / "manifests").mkdir()  # an empty manifests repo (an empty folder is refused)
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "--repo", str(tmp_path), "validate"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "valid: 0 documents" in result.stdout


LOADED = """
import sys
from reconciler.__main__ import main
sys.argv = ["reconciler", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
print(" ".join(m for m in ("structlog", "git") if m in sys.modules))
"""


def _loaded_by(*args: str, env: dict[str, str] | None = None) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", LOADED, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    ).stdout
    return set(out.splitlines()[-1].split())


def test_a_quiet_command_outside_git_loads_neither_structlog_nor_gitpython(
    tmp_path: Path,
) -> None:
    """structlog is loaded by the first line written at an enabled level, GitPython
    by the first manifests root that may be in git: a quiet command on a plain
    directory needs neither."""
    repo = tmp_path / "plain"
    (repo / "manifests").mkdir(parents=True)
    if any((d / ".git").exists() for d in repo.parents):
        pytest.skip("the temporary directory is inside a git work tree")
    assert _loaded_by("-q", "--repo", str(repo), "validate") == set()
    assert _loaded_by("-q", "--repo", str(ROOT), "validate") == {"git"}
