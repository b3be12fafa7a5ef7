"""The local provider against real SQLite files: idempotency, persistence, secret refs,
concurrency across connections and processes; plus the plugin registry."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.errors import ConfigError, ProviderError
from reconciler.instances import Instance, ProviderConfig
from reconciler.providers import LiveObject, make_provider, provider_class
from reconciler.providers.base import Problem
from reconciler.providers.http import HttpProvider
from reconciler.providers.local import REGISTRY_ENV, LocalProvider

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ProviderConfig(name="local", type="local", environment="dev")


def inst(name: str = "chat", *, temperature: float = 0.2, env: str = "dev") -> Instance:
    return Instance(
        environment=env,
        kind="Deployment",
        name=name,
        provider="local",
        spec={
            "model": "gpt-4o",
            "options": {"temperature": temperature},
            "env": {"API_KEY": {"secretEnv": "CHAT_API_KEY"}, "MODE": "fast"},
            "scaling": {"hardware": "cpu", "replicas": 1},
        },
        labels={"team": "support"},
    )


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalProvider]:
    p = LocalProvider(CONFIG, repo_root=tmp_path, env={"CHAT_API_KEY": "sk-live-value-123"})
    yield p
    p.close()


def rows(db: Path) -> list[tuple[str, str, str, str, str]]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT id, environment, kind, name, body FROM objects").fetchall()


def test_registry_lives_under_dot_reconciler_and_is_opened_lazily(tmp_path: Path) -> None:
    p = LocalProvider(CONFIG, repo_root=tmp_path, env={})
    assert not (tmp_path / ".reconciler").exists()  # making the provider touches no disk
    p.create(inst())
    p.close()
    db = tmp_path / ".reconciler" / "local-registry.db"
    assert db.is_file()
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_registry_env_names_an_absolute_path(tmp_path: Path) -> None:
    where = tmp_path / "elsewhere" / "r.db"
    p = LocalProvider(CONFIG, repo_root=tmp_path / "repo", env={REGISTRY_ENV: str(where)})
    p.create(inst())
    p.close()
    assert len(rows(where)) == 1
    assert not (tmp_path / "repo").exists()


def test_config_path_is_ignored_and_refused(tmp_path: Path) -> None:
    cfg = ProviderConfig("local", "local", "dev", config={"path": "../outside.db"})
    p = LocalProvider(cfg, repo_root=tmp_path / "repo", env={})
    (problem,) = p.validate(inst())
    assert isinstance(problem, Problem)
    assert (problem.on, problem.field) == ("provider", ("config", "path"))
    assert "config.path is not taken" in problem.message
    assert f"{REGISTRY_ENV}=/abs/path" in problem.message
    p.create(inst())  # should it run anyway, the manifest's path is never used
    p.close()
    assert not (tmp_path / "outside.db").exists()
    assert len(rows(tmp_path / "repo" / ".reconciler" / "local-registry.db")) == 1


def test_relative_registry_env_is_refused(tmp_path: Path) -> None:
    p = LocalProvider(CONFIG, repo_root=tmp_path, env={REGISTRY_ENV: "reg.db"})
    with pytest.raises(ProviderError, match=f"{REGISTRY_ENV} must be an absolute path"):
        p.create(inst())
    assert list(tmp_path.iterdir()) == []


def test_create_read_update_delete(local: LocalProvider) -> None:
    assert local.read("Deployment", "chat", "dev", None) is None
    pid = local.create(inst())
    live = local.read("Deployment", "chat", "dev", pid)
    assert live == LiveObject(pid, inst().body())
    assert live.body["labels"] == {"team": "support"}
    local.update(inst(temperature=0.9), pid)
    live = local.read("Deployment", "chat", "dev", pid)
    assert live is not None and live.provider_id == pid
    assert live.body["options"] == {"temperature": 0.9}
    local.delete("Deployment", "chat", "dev", pid)
    assert local.read("Deployment", "chat", "dev", pid) is None
    local.delete("Deployment", "chat", "dev", pid)  # already gone: done
    local.delete("Deployment", "never-was", "dev", None)


def test_objects_are_keyed_by_environment_kind_and_name(local: LocalProvider) -> None:
    a = local.create(inst(env="dev"))
    b = local.create(inst(env="staging"))
    sched = Instance("dev", "Schedule", "chat", "local", {"cron": "0 * * * *"})
    c = local.create(sched)
    assert len({a, b, c}) == 3
    assert local.read("Schedule", "chat", "dev", None) == LiveObject(c, sched.body())
    local.delete("Deployment", "chat", "dev", a)
    assert local.read("Deployment", "chat", "staging", None) is not None
    assert local.read("Schedule", "chat", "dev", None) is not None


def test_create_twice_returns_same_id_and_adopts_the_body(local: LocalProvider) -> None:
    first = local.create(inst())
    again = local.create(inst(temperature=0.7))  # a re-run after a crash, say
    assert again == first
    assert len(rows(local.path)) == 1
    live = local.read("Deployment", "chat", "dev", None)
    assert live is not None and live.body["options"]["temperature"] == 0.7


def test_survives_reopen(tmp_path: Path) -> None:
    p = LocalProvider(CONFIG, repo_root=tmp_path, env={})
    pid = p.create(inst())
    p.close()
    q = LocalProvider(CONFIG, repo_root=tmp_path, env={})
    try:
        live = q.read("Deployment", "chat", "dev", None)
        assert live == LiveObject(pid, inst().body())
        assert q.create(inst()) == pid
    finally:
        q.close()


def test_stores_secret_references_never_values(local: LocalProvider) -> None:
    local.create(inst())
    raw = b"".join(f.read_bytes() for f in local.path.parent.iterdir())
    assert b"sk-live-value-123" not in raw
    ((_, _, _, _, body),) = rows(local.path)
    assert json.loads(body)["env"]["API_KEY"] == {"secretEnv": "CHAT_API_KEY"}
    live = local.read("Deployment", "chat", "dev", None)
    assert live is not None and live.body["env"]["API_KEY"] == {"secretEnv": "CHAT_API_KEY"}
    # it never needs the value, so an unset variable is no failure either
    bare = LocalProvider(CONFIG, repo_root=local.repo_root, env={})
    try:
        bare.update(inst(temperature=0.5), "whatever")
    finally:
        bare.close()


def test_ids_are_time_ordered_uuid7_and_bodies_the_canonical_json(local: LocalProvider) -> None:
    """New ids land at the end of the primary-key index, not on a random page of it."""
    made = [inst(f"d{i}") for i in range(50)]
    ids = [local.create(i) for i in made]
    assert {uuid.UUID(i).version for i in ids} == {7}
    by_ms = [uuid.UUID(i).int >> 80 for i in ids]
    assert by_ms == sorted(by_ms)  # the millisecond prefix never goes back
    bodies = {name: body for _, _, _, name, body in rows(local.path)}
    assert [bodies[i.name] for i in made] == [i.canonical() for i in made]


def test_tampering_with_the_file_shows_in_read(local: LocalProvider) -> None:
    local.create(inst())
    with sqlite3.connect(local.path) as c:
        (body,) = c.execute("SELECT body FROM objects").fetchone()
        data = json.loads(body)
        data["options"]["temperature"] = 1.5
        c.execute("UPDATE objects SET body = ?", (json.dumps(data),))
    live = local.read("Deployment", "chat", "dev", None)
    assert live is not None and live.body["options"]["temperature"] == 1.5


def test_update_of_a_vanished_object_is_a_clear_error(local: LocalProvider) -> None:
    pid = local.create(inst())
    with sqlite3.connect(local.path) as c:
        c.execute("DELETE FROM objects")
    with pytest.raises(ProviderError, match=r"deployment\.chat .*no longer exists.*--heal"):
        local.update(inst(), pid)


def test_unopenable_registry_is_a_provider_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a directory should be")
    env = {REGISTRY_ENV: str(tmp_path / "blocker" / "r.db")}
    p = LocalProvider(CONFIG, repo_root=tmp_path, env=env)
    with pytest.raises(ProviderError, match=r"provider 'local' \(.*blocker/r\.db\): cannot open"):
        p.read("Deployment", "chat", "dev", None)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / ".reconciler" / "local-registry.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA user_version = 99")
    p = LocalProvider(CONFIG, repo_root=tmp_path, env={})
    with pytest.raises(ProviderError, match="schema 99 is newer"):
        p.create(inst())


def test_concurrent_creates_from_many_threads_and_connections(tmp_path: Path) -> None:
    providers = [LocalProvider(CONFIG, repo_root=tmp_path, env={}) for _ in range(4)]
    ids: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def work(i: int) -> None:
        try:
            barrier.wait()
            p = providers[i % 4]
            for n in range(10):
                ids.append(p.create(inst(f"d{n}")))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for p in providers:
        p.close()
    assert not errors
    assert len(ids) == 160
    assert len(set(ids)) == 10
    assert len(rows(tmp_path / ".reconciler" / "local-registry.db")) == 10


_CHILD = """
import sys
from pathlib import Path
from reconciler.instances import Instance, ProviderConfig
from reconciler.providers.local import LocalProvider
p = LocalProvider(ProviderConfig("local", "local", "dev"), repo_root=Path(sys.argv[1]), env={})
for n in range(20):
    print(p.create(Instance("dev", "Deployment", f"d{n}", "local", {"n": n})))
p.close()
"""


def test_concurrent_creates_from_several_processes(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(3)
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outs.append(out.split())
    assert outs[0] == outs[1] == outs[2]  # every process got the same id per name
    assert len(set(outs[0])) == 20
    assert len(rows(tmp_path / ".reconciler" / "local-registry.db")) == 20


def test_validate_reports_config_problems(tmp_path: Path) -> None:
    ok = LocalProvider(CONFIG, repo_root=tmp_path, env={})
    assert ok.validate(inst()) == []
    cfg = ProviderConfig("local", "local", "dev", config={"path": 3, "pth": "x"})
    bad = LocalProvider(cfg, repo_root=tmp_path, env={})
    problems = [p for p in bad.validate(inst()) if isinstance(p, Problem)]
    assert [p.field for p in problems] == [("config", "path"), ("config", "pth")]
    assert "unknown config key 'pth'" in problems[1].message
    assert "config.path is not taken" in problems[0].message


# --- the plugin registry ----------------------------------------------------------------


def test_provider_class_finds_built_ins_through_entry_points() -> None:
    assert provider_class("local") is LocalProvider
    assert provider_class("http") is HttpProvider
    assert LocalProvider.type_name == "local" and HttpProvider.type_name == "http"
    assert LocalProvider.immutable_fields == frozenset({"scaling.hardware"})
    assert HttpProvider.immutable_fields == frozenset()


def test_unknown_type_is_a_config_error_listing_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown provider type 'hf'.*known types: .*http.*local"
    ):
        provider_class("hf")


def test_make_provider(tmp_path: Path) -> None:
    p = make_provider(CONFIG, repo_root=tmp_path, env={})
    try:
        assert isinstance(p, LocalProvider)
        assert p.name == "local"
        assert "local" in repr(p)
    finally:
        p.close()
