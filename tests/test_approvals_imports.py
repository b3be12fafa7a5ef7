"""approvals/ is pure: importing it, or the manifest models that embed its policy,
loads no HTTP client; and the packages split apart here reach into no module's
private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "reconciler"
#: The packages this rule is checked for (the forge split and the HTTP client).
CHECKED = ("approvals", "forge", "httpclient", "providers/http.py")


@pytest.mark.parametrize(
    "module", ["reconciler.approvals", "reconciler.manifests", "reconciler.forge"]
)
def test_importing_loads_no_http_client(module: str) -> None:
    code = (
        f"import {module}, sys\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'httpcore'))\n"
        "assert not loaded, loaded\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def private_imports(path: Path, root: Path = ROOT.parent) -> list[str]:
    """`from reconciler.x import _name`, and private modules of another package."""
    rel = path.relative_to(root).with_suffix("")
    package = ".".join(rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("reconciler")):
            continue
        assert node.module is not None
        found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        parts = node.module.split(".")
        for i, part in enumerate(parts):
            owner = ".".join(parts[:i])
            if part.startswith("_") and not (package + ".").startswith(owner + "."):
                found.append(node.module)
    return [f"{rel.as_posix()}: {f}" for f in found]


def test_no_private_names_are_imported_across_modules() -> None:
    files = [
        p
        for c in CHECKED
        for p in ([ROOT / c] if c.endswith(".py") else sorted((ROOT / c).rglob("*.py")))
    ]
    assert len(files) > 10
    assert [v for f in files for v in private_imports(f)] == []


def test_the_check_finds_private_imports(tmp_path: Path) -> None:
    sample = tmp_path / "reconciler" / "forge" / "x.py"
    sample.parent.mkdir(parents=True)
    sample.write_text(
        "from reconciler.apply import _Providers\n"
        "from reconciler.render._common import short\n"
        "from reconciler.forge._own import fine\n"
        "from reconciler._strict import StrictModel\n"
    )
    assert private_imports(sample, tmp_path) == [
        "reconciler/forge/x: reconciler.apply._Providers",
        "reconciler/forge/x: reconciler.render._common",
    ]
