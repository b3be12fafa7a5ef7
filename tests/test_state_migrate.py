"""`reconciler state migrate` through the CLI: state applied on SQLite goes to PostgreSQL,
to git and back to SQLite with everything it had; refusals; no password ever shown."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from conftest import commit_all, run_cli
from pgserver import PgServer

from reconciler.state import open_state
from reconciler.state.base import StateStore
from reconciler.state.migrate import export_environment

SECRETS = {"VENDOR_KEY": "vendor-SECRET-0a1b2c3d"}


def _everything(url: str, repo: Path) -> dict[str, Any]:
    store = open_state(url, repo_root=repo, env={}, read_only=True)
    try:
        return _state_of(store)
    finally:
        store.close()


def _state_of(store: StateStore) -> dict[str, Any]:
    envs = store.environments()
    return {
        "serials": store.serials(),
        "key": store.fingerprint_key(create=False),
        "environments": {e: export_environment(store, e) for e in envs},
        "diffs": [[c.diff for c in r.changes] for r in store.runs()],
    }


def _cli(repo: Path, *args: str) -> tuple[int, str]:
    r = run_cli(["--repo", str(repo), *args], env=SECRETS)
    out = r.out + r.err
    assert "Traceback" not in out and SECRETS["VENDOR_KEY"] not in out
    return r.code, out


def test_migrate_keeps_everything_through_every_backend(
    example_repo: Path, postgres_server: PgServer
) -> None:
    repo = example_repo
    assert _cli(repo, "apply", "--env", "dev", "--env", "staging")[0] == 0
    chat = repo / "manifests" / "deployments" / "support-chat.yaml"
    chat.write_text(chat.read_text().replace("temperature: 0.2", "temperature: 0.4"))
    commit_all(repo, "warmer chat")
    assert _cli(repo, "apply", "--env", "dev")[0] == 0
    sqlite = "sqlite:///.reconciler/state.db"
    before = _everything(sqlite, repo)
    assert set(before["environments"]) == {"dev", "staging"} and before["key"] is not None
    pg = postgres_server.fresh_schema()
    assert postgres_server.password and postgres_server.password in pg
    hops = [sqlite, pg, "git://refs/reconciler/state", "sqlite:///.reconciler/copy.db"]
    for source, target in itertools.pairwise(hops):
        code, out = _cli(repo, "state", "migrate", "--from", source, "--to", target)
        assert code == 0, out
        assert "migrated 2 environments" in out and "fingerprint key copied" in out
        assert "dev: serial 7, 6 applied, 2 runs, 7 changes" in out
        assert postgres_server.password not in out
        assert _everything(target, repo) == before, f"{source} -> {target} lost something"
    for url in hops[1:]:
        code, out = _cli(repo, "--state", url, "plan", "--detailed-exitcode", "--env", "dev")
        assert code == 0 and "no changes" in out, out  # fingerprints match: key copied
        code, out = _cli(repo, "--state", url, "history")
        assert code == 0 and "dev" in out and "staging" in out


def test_migrate_refuses_a_target_that_knows_an_environment(
    example_repo: Path, postgres_url: str
) -> None:
    repo = example_repo
    assert _cli(repo, "apply", "--env", "dev")[0] == 0
    assert _cli(repo, "--state", postgres_url, "apply", "--env", "dev", "--env", "staging")[0] == 0
    before = _everything(postgres_url, repo)
    code, out = _cli(repo, "state", "migrate", "--to", postgres_url)
    assert code == 1
    assert "already has state for 'dev': refusing to merge two histories" in out
    assert "nothing was copied" in out and "***" in out and "Traceback" not in out
    assert _everything(postgres_url, repo) == before


def test_migrate_never_copies_while_a_run_holds_a_lock(
    example_repo: Path, postgres_url: str, postgres_server: PgServer
) -> None:
    repo = example_repo
    assert _cli(repo, "--state", postgres_url, "apply", "--env", "dev")[0] == 0
    target = "sqlite:///.reconciler/copy.db"
    holder = open_state(postgres_url, repo_root=repo, env={})
    try:
        with holder.lock("dev", "held-run") as info:
            code, out = _cli(repo, "state", "migrate", "--from", postgres_url, "--to", target)
            assert code == 4, out
            assert f"environment 'dev' is locked in {holder.url} by {info.describe()}" in out
            assert postgres_server.password not in out
    finally:
        holder.close()
    assert _everything(target, repo)["environments"] == {}
    code, out = _cli(repo, "state", "migrate", "--from", postgres_url, "--to", target)
    assert code == 0, out
    assert "migrated 1 environment from postgresql://reconciler:***@" in out


def test_a_wrong_password_is_never_shown(example_repo: Path, postgres_server: PgServer) -> None:
    url = postgres_server.fresh_schema()
    wrong = url.replace(postgres_server.password or "", "hunter2-WRONG")
    code, out = _cli(example_repo, "state", "migrate", "--to", wrong)
    assert code == 1
    assert "hunter2-WRONG" not in out and "reconciler:***@127.0.0.1" in out
    assert "password authentication failed" in out
    code, out = _cli(example_repo, "--state", wrong, "status")
    assert code == 1 and "hunter2-WRONG" not in out, out


@pytest.mark.parametrize(
    "url", ["postgresql://u:pw-SECRET@127.0.0.1:1/db?bogus=1", "redis://u:pw-SECRET@h/0"]
)
def test_bad_urls_are_config_errors_without_the_password(example_repo: Path, url: str) -> None:
    code, out = _cli(example_repo, "--state", url, "status")
    assert code == 1 and "pw-SECRET" not in out and out.startswith("error: "), out
