"""Issue 13: the `local` provider's registry lives under the repo's `.reconciler/` or at
an absolute path the operator gives (RECONCILER_LOCAL_REGISTRY or --local-registry),
never where a manifest says: a change under review could otherwise create or migrate
a SQLite file anywhere the runner can write. Real git repos, the real CLI."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from conftest import Result, commit_all, init_repo, run_cli, write_files

ENVIRONMENT = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: dev}
"""
PROVIDER = """apiVersion: reconciler/v1
kind: Provider
metadata: {name: local}
spec:
  type: local
  environments: [dev]
  config:
    path: %s
"""
DEPLOYMENT = """apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat}
spec:
  environments: [dev]
  provider: local
  model: gpt-4o-mini
"""


def make_repo(root: Path, path: str | None = None) -> Path:
    init_repo(root)
    provider = PROVIDER % path if path else PROVIDER.split("  config:")[0]
    write_files(
        root,
        {
            "manifests/environment.yaml": ENVIRONMENT,
            "manifests/provider.yaml": provider,
            "manifests/chat.yaml": DEPLOYMENT,
            ".gitignore": ".reconciler/\n",
        },
    )
    commit_all(root, "chat on the local registry")
    return root


def cli(repo: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    r = run_cli(["--repo", str(repo), *args], env=env)
    assert "Traceback" not in r.out + r.err
    return r


def names_in(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as c:
        return [n for (n,) in c.execute("SELECT name FROM objects")]


def sqlite_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.db*") if ".git" not in p.parts)


def test_config_path_in_a_manifest_is_a_located_error_and_writes_nothing(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "work" / "repo", "../../outside.db")
    r = cli(repo, "validate")
    assert r.code == 1, r.out + r.err
    text = r.out + r.err
    assert "manifests/provider.yaml:8:11:" in text, text
    assert "config.path is not taken" in text
    assert "RECONCILER_LOCAL_REGISTRY=/abs/path" in text
    r = cli(repo, "apply")
    assert r.code == 1 and "config.path is not taken" in r.out + r.err
    # no registry anywhere (not outside.db, not the default): only the state apply opened
    assert sqlite_files(tmp_path) == [repo / ".reconciler" / "state.db"]


def test_registry_env_puts_the_registry_there(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    where = tmp_path / "registries" / "dev.db"
    env = {"RECONCILER_LOCAL_REGISTRY": str(where)}
    r = cli(repo, "apply", env=env)
    assert r.code == 0, r.out + r.err
    assert names_in(where) == ["chat"]
    assert not (repo / ".reconciler" / "local-registry.db").exists()
    r = cli(repo, "drift", env=env)
    assert (r.code, "1 in sync" in r.out) == (0, True), r.out + r.err


def test_local_registry_flag_puts_the_registry_there(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    where = tmp_path / "flagged.db"
    r = cli(repo, "--local-registry", str(where), "apply")
    assert r.code == 0, r.out + r.err
    assert names_in(where) == ["chat"]
    assert not (repo / ".reconciler" / "local-registry.db").exists()


def test_relative_registry_env_is_an_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    r = cli(repo, "apply", env={"RECONCILER_LOCAL_REGISTRY": "../elsewhere.db"})
    assert r.code == 1, r.out + r.err
    assert "RECONCILER_LOCAL_REGISTRY must be an absolute path" in r.err
    assert sqlite_files(tmp_path) == []
