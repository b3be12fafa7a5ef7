"""The git:// state backend: clones, a bare origin, racing processes and the user's
checkout (the contract runs in test_state_contract.py)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import subprocess
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from conftest import commit_all, git, init_repo, write_files

from reconciler.errors import ConfigError, LockedError, StateError, StateMovedError
from reconciler.state import open_state
from reconciler.state.base import AppliedRecord, ChangeRecord, RunRecord, StateStore
from reconciler.state.store import Store

URL = "git://refs/reconciler/state"
REF = "refs/reconciler/state"
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _run(run_id: str, env: str = "dev", at: datetime = T0) -> RunRecord:
    return RunRecord(run_id, env, "c1", "apply", at, None, "running")


def _change(name: str, env: str = "dev", action: str = "create") -> ChangeRecord:
    return ChangeRecord((env, "Deployment", name), action, "applied", None, f"id-{name}", None, "h")


def _applied(name: str, run_id: str, env: str = "dev") -> AppliedRecord:
    spec = {"name": name, "model": "gpt-4o", "env": {"K": {"secretEnv": "K"}}}
    return AppliedRecord(
        env, "Deployment", name, "local", f"id-{name}", spec, f"h-{name}", {"K": "hmac:x"},
        "c1", run_id, T0,
    )  # fmt: skip


def _apply(store: StateStore, run_id: str, names: list[str], env: str = "dev") -> None:
    with store.lock(env, run_id):
        store.begin_run(_run(run_id, env))
        for n in names:
            store.record_change(run_id, _change(n, env), _applied(n, run_id, env), None)
        store.finish_run(run_id, "applied")


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = init_repo(tmp_path / "seed")
    write_files(seed, {"manifests/reconciler.yaml": f"state: {URL}\n"})
    commit_all(seed, "init")
    git(seed, "push", "-q", str(bare), "main")
    return bare


def _clone(origin: Path, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(origin), str(dest)], check=True)
    git(dest, "config", "user.email", "dev@example.com")
    git(dest, "config", "user.name", "Dev")
    return dest


def _open(repo: Path) -> Store:
    store = open_state(URL, repo_root=repo / "manifests", env={})
    assert isinstance(store, Store)
    return store


def test_state_is_pushed_and_visible_from_a_second_clone(origin: Path, tmp_path: Path) -> None:
    a = _clone(origin, tmp_path / "a")
    s = _open(a)
    assert s.applied("dev") == {}  # first use: the ref exists nowhere yet
    _apply(s, "r1", ["x", "y"])
    assert git(a, "rev-parse", REF) == git(origin, "rev-parse", REF)

    b = _clone(origin, tmp_path / "b")  # a plain clone does not fetch refs/reconciler/*
    s2 = _open(b)
    assert set(s2.applied("dev")) == {("dev", "Deployment", "x"), ("dev", "Deployment", "y")}
    assert s2.serial("dev") == 2 and s2.lock_holder("dev") is None
    run = s2.run("r1")
    assert run is not None and run.outcome == "applied" and len(run.changes) == 2
    assert s2.fingerprint_key() == s.fingerprint_key()  # one key per state, shared
    _apply(s2, "r2", ["z"], env="prod")
    s.close()
    s2.close()

    s3 = _open(a)  # a new command in the first clone fetches what the second pushed
    assert s3.serials() == {"dev": 2, "prod": 1}
    assert [r.id for r in s3.runs()] == ["r2", "r1"] or [r.id for r in s3.runs()] == ["r1", "r2"]
    assert s3.environments() == ["dev", "prod"]
    s3.close()


def test_users_head_index_and_working_tree_are_untouched(origin: Path, tmp_path: Path) -> None:
    repo = _clone(origin, tmp_path / "a")
    write_files(repo, {"manifests/staged.yaml": "a: 1\n", "manifests/untracked.yaml": "b: 2\n"})
    git(repo, "add", "manifests/staged.yaml")
    (repo / "manifests/reconciler.yaml").write_text("modified: true\n")

    def snapshot() -> tuple[str, ...]:
        return (
            git(repo, "rev-parse", "HEAD"),
            git(repo, "symbolic-ref", "HEAD"),
            git(repo, "status", "--porcelain=v1", "--untracked-files=all"),
            git(repo, "diff", "--cached"),
            git(repo, "diff"),
            hashlib.sha256((repo / ".git/index").read_bytes()).hexdigest(),
            str(sorted(p.relative_to(repo) for p in repo.rglob("*") if ".git" not in p.parts)),
        )  # fmt: skip

    before = snapshot()
    s = _open(repo)
    _apply(s, "r1", ["x", "y", "z"])
    s.fingerprint_key()
    s.close()
    assert snapshot() == before
    files = git(repo, "ls-tree", "-r", "--name-only", REF).splitlines()
    assert "meta.json" in files and "environments/dev/serial" in files
    assert any(f.startswith("environments/dev/applied/") for f in files)
    assert any(f.endswith("/run.json") and "/runs/2026-11/" in f for f in files)
    assert not any(f.endswith("lock.json") for f in files)  # released
    # one commit per write, all readable in `git log`
    log = git(repo, "log", "--format=%s", REF).splitlines()
    assert log[0].startswith("unlock dev") and any("Deployment/y in dev" in m for m in log)


@pytest.mark.parametrize("remote", [False, True], ids=["update-ref", "push-lease"])
def test_lost_race_is_retried_while_the_lock_is_ours(tmp_path: Path, remote: bool) -> None:
    repo = init_repo(tmp_path / "w")
    write_files(repo, {"manifests/reconciler.yaml": f"state: {URL}\n"})
    commit_all(repo, "init")
    if remote:
        subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "o.git")], check=True)
        git(repo, "remote", "add", "origin", str(tmp_path / "o.git"))
    s1, s2 = _open(repo), _open(repo)
    with s1.lock("dev", "r1"):
        s1.begin_run(_run("r1"))  # s1's cached view is now the newest
        _apply(s2, "r2", ["p"], env="prod")  # moves the ref behind s1's back
        s1.record_change("r1", _change("a"), _applied("a", "r1"), None)  # CAS lost, retried
    assert s2.serials() == {"dev": 1, "prod": 1}
    assert s2.lock_holder("dev") is None
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/reconciler") == REF
    if remote:
        assert git(repo, "rev-parse", REF) == git(tmp_path / "o.git", "rev-parse", REF)
    s1.close()
    s2.close()


def test_unlocked_write_after_a_concurrent_one_is_state_moved(origin: Path, tmp_path: Path) -> None:
    s1 = _open(_clone(origin, tmp_path / "a"))
    s2 = _open(_clone(origin, tmp_path / "b"))
    s1.begin_run(_run("r1"))
    s1.record_change("r1", _change("a"), _applied("a", "r1"), None)
    s2.record_change("r1", _change("b"), _applied("b", "r1"), None)  # s2 fetched r1 first
    with pytest.raises(StateMovedError, match=r"state moved.*re-plan") as e:
        s1.record_change("r1", _change("c"), _applied("c", "r1"), None)
    assert e.value.exit_code == 4
    s3 = _open(_clone(origin, tmp_path / "c"))
    assert set(s3.applied("dev")) == {("dev", "Deployment", "a"), ("dev", "Deployment", "b")}
    assert s3.serial("dev") == 2
    for s in (s1, s2, s3):
        s.close()


def test_read_only_store_never_commits_or_pushes(origin: Path, tmp_path: Path) -> None:
    repo = _clone(origin, tmp_path / "a")
    ro = open_state(URL, repo_root=repo / "manifests", env={}, read_only=True)
    assert ro.serials() == {} and ro.fingerprint_key(create=False) is None
    with pytest.raises(StateError, match="read-only"):
        ro.fingerprint_key()
    with pytest.raises(StateError, match="read-only"), ro.lock("dev", "r1"):
        pass
    ro.close()
    for where in (repo, origin):
        assert git(where, "for-each-ref", "refs/reconciler") == ""
    rw = _open(repo)
    _apply(rw, "r1", ["x"])
    rw.close()
    pushed = git(origin, "rev-parse", REF)
    ro = open_state(URL, repo_root=_clone(origin, tmp_path / "b") / "manifests", env={},
                    read_only=True)  # fmt: skip
    assert ro.serial("dev") == 1 and ro.run("r1") is not None
    with pytest.raises(StateError, match="read-only"):
        ro.begin_run(_run("r2"))
    ro.close()
    assert git(origin, "rev-parse", REF) == pushed


# -- processes -------------------------------------------------------------------------


def _worker(repo: str, env: str, run_id: str, names: list[str], barrier: Barrier, q: Any) -> None:
    store = open_state(URL, repo_root=Path(repo), env={})
    done: list[str] = []
    try:
        store.serial(env)  # warm up (imports, git processes) so the two really race
        barrier.wait(30)
        with store.lock(env, run_id):
            barrier.wait(30)  # the loser tries while the winner still holds the lock
            store.begin_run(_run(run_id, env))
            for n in names:
                store.record_change(run_id, _change(n, env), _applied(n, run_id, env), None)
                done.append(n)
            store.finish_run(run_id, "applied")
        q.put((run_id, "ok", 0, done))
    except (LockedError, StateMovedError) as e:
        barrier.wait(30)
        q.put((run_id, type(e).__name__, e.exit_code, done))
    except BaseException as e:  # report, never hang the other process or the test
        barrier.abort()
        q.put((run_id, repr(e), -1, done))
    finally:
        store.close()


def _race(origin: Path, tmp_path: Path, envs: list[str]) -> list[tuple[str, str, int, list[str]]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(envs))
    q = ctx.Queue()
    procs = []
    for i, env in enumerate(envs):
        repo = _clone(origin, tmp_path / f"clone{i}")
        names = [f"p{i}-{j}" for j in range(8)]
        args = (str(repo / "manifests"), env, f"run{i}", names, barrier, q)
        procs.append(ctx.Process(target=_worker, args=args))
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return sorted(results)


def test_two_processes_race_for_one_environment(origin: Path, tmp_path: Path) -> None:
    results = _race(origin, tmp_path, ["dev", "dev"])
    outcomes = sorted(r[1] for r in results)
    assert outcomes == ["LockedError", "ok"], results
    winner = next(r for r in results if r[1] == "ok")
    loser = next(r for r in results if r[1] != "ok")
    assert loser[2] == 4 and loser[3] == []
    s = _open(_clone(origin, tmp_path / "check"))
    assert {k[2] for k in s.applied("dev")} == set(winner[3])
    assert s.serial("dev") == 8 and s.lock_holder("dev") is None
    assert [r.id for r in s.runs()] == [winner[0]]
    s.close()


def test_two_processes_write_different_environments_at_once(origin: Path, tmp_path: Path) -> None:
    results = _race(origin, tmp_path, ["dev", "prod"])
    assert [r[1] for r in results] == ["ok", "ok"], results
    s = _open(_clone(origin, tmp_path / "check"))
    assert s.serials() == {"dev": 8, "prod": 8}  # every lost CAS was retried, none lost
    assert {k[2] for k in s.applied("dev")} == set(results[0][3])
    assert {k[2] for k in s.applied("prod")} == set(results[1][3])
    assert all(r.outcome == "applied" and len(r.changes) == 8 for r in s.runs())
    s.close()


# -- errors ----------------------------------------------------------------------------


def test_bad_urls_and_repos(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "w")
    for url in ("git://", "git://github.com/acme/repo", "git://refs/../x", "git://refs/a/"):
        with pytest.raises(ConfigError, match="needs a ref"):
            open_state(url, repo_root=repo, env={})
    with pytest.raises(ConfigError, match="to be a git repository"):
        open_state(URL, repo_root=tmp_path / "not-a-repo", env={})
    with pytest.raises(ConfigError, match="checked-out branch"):
        open_state("git://refs/heads/main", repo_root=repo, env={})


def test_rejected_push_is_one_clear_error_not_a_race(origin: Path, tmp_path: Path) -> None:
    s = _open(_clone(origin, tmp_path / "a"))
    hook = origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'state writes are frozen' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(StateError, match="cannot push") as e:
        s.begin_run(_run("r1"))
    assert not isinstance(e.value, StateMovedError) and "\n" not in e.value.message
    s.close()


def test_unreachable_remote_hides_credentials(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "w")
    git(repo, "remote", "add", "origin", "http://bot:s3cret-token@127.0.0.1:1/x.git")
    s = open_state(URL, repo_root=repo, env={})
    with pytest.raises(StateError, match="cannot fetch") as e:
        s.serial("dev")
    assert "s3cret" not in e.value.message
    s.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "w")
    s = open_state(URL, repo_root=repo, env={})
    s.fingerprint_key()
    s.close()
    env = {**os.environ, "GIT_INDEX_FILE": str(tmp_path / "idx")}

    def g(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, env=env, input=stdin, check=True, capture_output=True,
            text=True,
        ).stdout.strip()  # fmt: skip

    blob = g("hash-object", "-w", "--stdin", stdin='{"schema": 99}\n')
    g("read-tree", REF)
    g("update-index", "--cacheinfo", f"100644,{blob},meta.json")
    commit = g("commit-tree", g("write-tree"), "-p", REF, "-m", "from the future")
    g("update-ref", REF, commit)
    with pytest.raises(StateError, match="newer than this reconciler"):
        open_state(URL, repo_root=repo, env={}).serial("dev")
