"""A transaction of a `git://` state: a mutation of one snapshot of the ref, as the
files it changes (see backend.py)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from reconciler.errors import StateError
from reconciler.instances import InstanceKey
from reconciler.state.backend import MissingRun
from reconciler.state.base import (
    AppliedRecord,
    ChangeRecord,
    EnvironmentState,
    LockInfo,
    RunRecord,
)
from reconciler.state.git import layout as lay
from reconciler.state.git.refs import Changes, Snapshot
from reconciler.vocabulary import RunOutcome

if TYPE_CHECKING:
    from reconciler.state.git.backend import GitBackend


class SnapshotTx:
    """One mutation of a snapshot: reads see its own writes; `watch` collects the paths
    it depends on (for a write that does not recheck after a lost race)."""

    def __init__(self, backend: GitBackend, snap: Snapshot, watch: list[str]) -> None:
        self._b = backend
        self._snap = snap
        self._watch = watch
        self._out: Changes = {}
        self._buckets: dict[str, dict[InstanceKey, AppliedRecord]] = {}
        #: Runs this transaction added (besides the snapshot's).
        self._added: dict[str, lay.RunPath] = {}

    def _depends(self, *paths: str) -> None:
        self._watch.extend(p for p in paths if p not in self._watch)

    def _doc(self, path: str) -> Any:
        if path in self._out:
            data = self._out[path]
            return None if data is None else json.loads(data)
        return self._b.json(self._snap, path)

    def _find(self, run_id: str) -> lay.RunPath | None:
        return self._added.get(run_id) or self._b.run_paths(self._snap).get(run_id)

    def _run_path(self, run_id: str) -> lay.RunPath:
        rp = self._find(run_id)
        if rp is None:
            raise MissingRun(run_id)
        return rp

    def changes(self) -> Changes:
        for path, records in self._buckets.items():
            self._out[path] = (
                lay.dump([lay.applied_json(records[k]) for k in sorted(records)])
                if records
                else None
            )
        return self._out

    def lock_row(self, environment: str) -> LockInfo | None:
        path = lay.lock_path(environment)
        self._depends(path)
        doc = self._doc(path)
        return lay.lock_info(doc) if doc is not None else None

    def knows(self, environment: str) -> bool:
        prefix, lock = lay.env_dir(environment) + "/", lay.lock_path(environment)
        return any(p.startswith(prefix) and p != lock for p in self._snap.files)

    def run(self, run_id: str) -> RunRecord | None:
        rp = self._find(run_id)
        if rp is None:
            return None
        self._depends(rp.header)
        return lay.run_record(self._doc(rp.header), [])

    def add_run(self, run: RunRecord) -> None:
        self._depends(lay.lock_path(run.environment))
        if self._find(run.id) is not None:
            raise StateError(f"state {self._b.url}: run {run.id} is already recorded")
        runs = [*self._b.run_paths(self._snap).values(), *self._added.values()]
        seq = 1 + max((rp.seq for rp in runs), default=0)
        header = lay.run_dir(run.environment, run.started_at, seq, run.id) + "/run.json"
        self._out[header] = lay.dump(lay.run_json(run))
        self._added[run.id] = cast(lay.RunPath, lay.parse_run_path(header))

    def append_change(self, run_id: str, change: ChangeRecord, at: datetime) -> None:
        env = change.key.environment
        rp = self._run_path(run_id)
        self._depends(lay.lock_path(env), lay.serial_path(env), rp.header)
        index = 0
        while lay.chunk_path(rp.dir, index + 1) in self._snap.files:
            index += 1
        chunk = self._doc(lay.chunk_path(rp.dir, index)) or []
        if len(chunk) >= lay.CHUNK:
            index, chunk = index + 1, []
        chunk.append({**lay.change_json(change), "at": at.isoformat()})
        self._out[lay.chunk_path(rp.dir, index)] = lay.dump(chunk)

    def end_run(
        self,
        run_id: str,
        outcome: RunOutcome,
        finished_at: datetime,
        details: dict[str, Any] | None,
    ) -> None:
        rp = self._run_path(run_id)
        self._depends(rp.header, lay.lock_path(rp.environment))
        doc = self._doc(rp.header)
        doc["outcome"] = outcome
        doc["finished_at"] = finished_at.isoformat()
        if details is not None:
            doc["details"] = details
        self._out[rp.header] = lay.dump(doc)

    def _bucket(self, key: InstanceKey) -> dict[InstanceKey, AppliedRecord]:
        path = lay.bucket_path(key)
        if path not in self._buckets:
            self._depends(path)
            self._buckets[path] = self._b.bucket(self._snap, path)
        return self._buckets[path]

    def put_applied(self, record: AppliedRecord) -> None:
        self._bucket(record.key)[record.key] = record

    def delete_applied(self, key: InstanceKey) -> None:
        self._bucket(key).pop(key, None)

    def bump_serial(self, environment: str) -> None:
        path = lay.serial_path(environment)
        self._depends(path)
        data = self._out[path] if path in self._out else self._b.read(self._snap, path)
        self._out[path] = f"{int(data) + 1 if data else 1}\n".encode()

    def put_environment(self, state: EnvironmentState) -> None:
        env = state.environment
        seq = max((rp.seq for rp in self._b.run_paths(self._snap).values()), default=0)
        for run in state.runs:
            seq += 1
            run_dir = lay.run_dir(env, run.started_at, seq, run.id)
            self._out[f"{run_dir}/run.json"] = lay.dump(lay.run_json(run))
            changes = [lay.change_json(c) for c in run.changes]
            for i in range(0, len(changes), lay.CHUNK):
                chunk = changes[i : i + lay.CHUNK]
                self._out[lay.chunk_path(run_dir, i // lay.CHUNK)] = lay.dump(chunk)
        buckets: dict[str, list[AppliedRecord]] = {}
        for record in sorted(state.applied, key=lambda r: r.key):
            buckets.setdefault(lay.bucket_path(record.key), []).append(record)
        for path, records in buckets.items():
            self._out[path] = lay.dump([lay.applied_json(r) for r in records])
        if state.serial:
            self._out[lay.serial_path(env)] = f"{state.serial}\n".encode()

    def _meta(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._doc(lay.META) or {"schema": lay.SCHEMA_VERSION})

    def key(self) -> bytes | None:
        key = self._meta().get("fingerprint_key")
        return bytes.fromhex(key) if key else None

    def put_key(self, key: bytes, *, replace: bool) -> bytes:
        if not replace and (stored := self.key()) is not None:
            return stored
        self._out[lay.META] = lay.dump({**self._meta(), "fingerprint_key": key.hex()})
        return key

    def any_applied(self) -> bool:
        return any(lay.applied_env(p) is not None for p in self._snap.files)
