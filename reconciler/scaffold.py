"""`reconciler init`: a new manifests repo that validates and plans out of the box."""

from __future__ import annotations

from importlib import metadata
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from reconciler import __version__
from reconciler.errors import ReconcilerError
from reconciler.manifests.schema import write_schemas

#: This project's name on PyPI (the command and the Python package are `reconciler`;
#: the PyPI project called `reconciler` is someone else's).
DISTRIBUTION = "ai-reconciler"
#: Replaced in the CI templates by the version that runs `init`.
_VERSION_TOKEN = b"@RECONCILER_VERSION@"

#: Scaffold file → path in the new repo (package data cannot ship a dotfile reliably).
_RENAMES = {"gitignore": ".gitignore"}
#: CI templates per forge: scaffold/_ci/<forge>/<file> → where the forge looks.
CI_TARGETS = {"github": ".github/workflows/", "gitlab": "", "none": ""}
_CI_RENAMES = {"gitlab-ci.yml": ".gitlab-ci.yml"}
#: Approval sources `init --approvals` accepts, and the default for each --ci.
APPROVAL_SOURCES = ("github", "gitlab", "file", "none")
_DEFAULT_SOURCE = {"github": "github", "gitlab": "gitlab", "none": "file"}
_SOURCE_LINE = b"  source: github "


def _walk(node: Traversable, prefix: str = "") -> list[tuple[str, Traversable]]:
    out: list[tuple[str, Traversable]] = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            if child.name not in ("__pycache__", "_ci"):
                out.extend(_walk(child, rel + "/"))
        else:
            out.append((_RENAMES.get(rel, rel), child))
    return out


def installed_version() -> str:
    """The version running now: generated pipelines install exactly this one."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # imported from a source tree, not installed
        return __version__


def init_repo(target: Path, *, ci: str = "github", approvals: str | None = None) -> list[Path]:
    """Write the scaffold (and the `ci` forge's pipelines) into `target`; refuses to
    overwrite anything. `approvals` is the source reconciler.yaml names (default: the
    forge of `ci`, or the approvals file without one)."""
    if ci not in CI_TARGETS:
        raise ReconcilerError(f"--ci must be one of {', '.join(CI_TARGETS)}, not {ci!r}")
    source = approvals or _DEFAULT_SOURCE[ci]
    if source not in APPROVAL_SOURCES:
        raise ReconcilerError(
            f"--approvals must be one of {', '.join(APPROVAL_SOURCES)}, not {source!r}"
        )
    root = files("reconciler") / "scaffold"
    scaffold = [(rel, src.read_bytes()) for rel, src in _walk(root)]
    scaffold = [
        (rel, _with_source(data, source) if rel == "reconciler.yaml" else data)
        for rel, data in scaffold
    ]
    if ci != "none":
        version = installed_version().encode()
        scaffold += [
            (
                CI_TARGETS[ci] + _CI_RENAMES.get(rel, rel),
                src.read_bytes().replace(_VERSION_TOKEN, version),
            )
            for rel, src in _walk(root / "_ci" / ci)
        ]
    clashes = [rel for rel, _ in scaffold if (target / rel).exists()]
    if clashes:
        raise ReconcilerError(
            f"{target} already has {', '.join(clashes)}; refusing to overwrite",
            details="Run `reconciler init` in an empty folder, or move those files away.",
        )
    written: list[Path] = []
    for rel, data in scaffold:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        written.append(dest)
    written.extend(write_schemas(target / "schemas"))
    if not (target / ".git").exists():
        import git

        git.Repo.init(target, initial_branch="main")
        written.append(target / ".git")
    return written


def _with_source(config: bytes, source: str) -> bytes:
    """The scaffold's reconciler.yaml naming `source` (the column of its comment kept)."""
    assert _SOURCE_LINE in config, "the scaffold's reconciler.yaml names github"
    return config.replace(_SOURCE_LINE, f"  source: {source} ".ljust(len(_SOURCE_LINE)).encode())
