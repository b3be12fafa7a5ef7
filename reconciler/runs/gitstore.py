"""Executions in a `git://REF` state: commits on a ref of their own, `REF-executions`,
so a busy schedule never races an apply for the state's ref. One file per execution
(`executions/ENV/ID.json`) and one per fire key (`fires/SHA`): a fire recorded by
another process is found on the compare-and-swapped ref, never written twice."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from datetime import datetime
from pathlib import Path

import git
from git.exc import InvalidGitRepositoryError, NoSuchPathError

from reconciler.errors import ConfigError, StateError
from reconciler.runs.model import Execution, Query
from reconciler.state.git import parse_git_url
from reconciler.state.git.refs import Changes, RefStore, Snapshot

_PREFIX = "executions/"


class _Refused(Exception):
    """Raised inside a write's mutation: nothing to write (a duplicate, a moved status)."""


def _path(ex: Execution) -> str:
    return f"{_PREFIX}{ex.environment}/{ex.id}.json"


def _fire_path(key: str) -> str:
    return "fires/" + hashlib.sha256(key.encode()).hexdigest()


class GitExecutions:
    def __init__(self, repo_root: Path, url: str, *, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        ref = parse_git_url(url) + "-executions"
        try:
            repo = git.Repo(repo_root, search_parent_directories=True)
        except (InvalidGitRepositoryError, NoSuchPathError):
            raise ConfigError(
                f"state {url} needs the manifests repo to be a git repository"
            ) from None
        remote = "origin" if any(r.name == "origin" for r in repo.remotes) else None
        self._refs = RefStore(repo, ref, url=url, remote=remote, validate=lambda _r, _s: None)

    def _snap(self) -> Snapshot:
        return self._refs.fetch()

    def _doc(self, snap: Snapshot, path: str) -> Execution | None:
        data = self._refs.read(snap, path)
        return None if data is None else Execution.from_document(json.loads(data))

    def _writable(self) -> None:
        if self.read_only:
            raise StateError(f"state {self.url} is open read-only: cannot record an execution")

    def add(self, ex: Execution) -> bool:
        self._writable()
        key = ex.fire_key

        def mutate(snap: Snapshot) -> Changes:
            if key is not None and _fire_path(key) in snap.files:
                raise _Refused
            changes: Changes = {_path(ex): ex.to_json().encode()}
            if key is not None:
                changes[_fire_path(key)] = ex.id.encode()
            return changes

        try:
            self._refs.write(f"execution {ex.id}", mutate, reevaluate=True, fresh=True)
        except _Refused:
            return False
        return True

    def add_many(self, executions: Sequence[Execution]) -> list[bool]:
        self._writable()
        recorded: list[bool] = []

        def mutate(snap: Snapshot) -> Changes:
            recorded.clear()
            changes: Changes = {}
            for ex in executions:
                key = ex.fire_key
                fire = None if key is None else _fire_path(key)
                if fire is not None and (fire in snap.files or fire in changes):
                    recorded.append(False)
                    continue
                changes[_path(ex)] = ex.to_json().encode()
                if fire is not None:
                    changes[fire] = ex.id.encode()
                recorded.append(True)
            return changes

        self._refs.write(f"{len(executions)} executions", mutate, reevaluate=True, fresh=True)
        return list(recorded)

    def transition(self, ex: Execution, from_statuses: Collection[str]) -> bool:
        self._writable()

        def mutate(snap: Snapshot) -> Changes:
            now = self._doc(snap, _path(ex))
            if now is None or now.status not in from_statuses:
                raise _Refused
            return {_path(ex): ex.to_json().encode()}

        try:
            self._refs.write(f"execution {ex.id}: {ex.status}", mutate, reevaluate=True, fresh=True)
        except _Refused:
            return False
        return True

    def get(self, execution_id: str) -> Execution | None:
        snap = self._snap()
        for path in snap.files:
            if path.startswith(_PREFIX) and path.endswith(f"/{execution_id}.json"):
                return self._doc(snap, path)
        return None

    def _all(self, snap: Snapshot) -> list[Execution]:
        out = []
        for path in snap.files:
            if path.startswith(_PREFIX):
                ex = self._doc(snap, path)
                if ex is not None:
                    out.append(ex)
        out.sort(key=lambda e: (e.created_at, e.id), reverse=True)
        return out

    def last_fires(self, environment: str) -> dict[str, datetime]:
        out: dict[str, datetime] = {}
        for ex in self._all(self._snap()):
            if ex.environment != environment or not ex.schedule or ex.fire_time is None:
                continue
            if ex.schedule not in out or ex.fire_time > out[ex.schedule]:
                out[ex.schedule] = ex.fire_time
        return out

    def find(self, query: Query) -> list[Execution]:
        found = [ex for ex in self._all(self._snap()) if query.matches(ex)]
        return found if query.limit is None else found[: query.limit]

    def prune(self, environment: str, keep: int) -> int:
        self._writable()
        dropped: list[int] = [0]

        def mutate(snap: Snapshot) -> Changes:
            under = f"{_PREFIX}{environment}/"
            if sum(1 for p in snap.files if p.startswith(under)) <= keep:
                return {}
            mine = [ex for ex in self._all(snap) if ex.environment == environment]
            old = [ex for ex in mine[keep:] if ex.status not in ("pending", "running")]
            dropped[0] = len(old)
            changes: Changes = {}
            for ex in old:
                changes[_path(ex)] = None
                if ex.fire_key is not None:
                    changes[_fire_path(ex.fire_key)] = None
            return changes

        self._refs.write(f"executions of {environment}: pruned", mutate, reevaluate=True)
        return dropped[0]

    def import_executions(self, executions: Sequence[Execution]) -> None:
        self._writable()

        def mutate(snap: Snapshot) -> Changes:
            changes: Changes = {}
            for ex in executions:
                changes[_path(ex)] = ex.to_json().encode()
                if ex.fire_key is not None:
                    changes[_fire_path(ex.fire_key)] = ex.id.encode()
            return changes

        self._refs.write(f"{len(executions)} executions imported", mutate, reevaluate=True)

    def close(self) -> None:
        self._refs.close()
