"""`git://REF` storage: the Backend over a compare-and-swapped ref (`refs`), in the tree
`layout` describes. A transaction is a mutation of the newest snapshot, committed and
swapped in; after a lost race it is recomputed on the new snapshot when the store says
it checks for itself (`Write.rechecks`), else refused (StateMovedError) if anything it
depends on moved: its environment's lock, the serial, the run, the applied buckets it
touched. Read-only stores fetch but never commit or push (the store writes nothing).
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import git
from git.exc import InvalidGitRepositoryError, NoSuchPathError

from reconciler.errors import ConfigError, StateError
from reconciler.instances import InstanceKey
from reconciler.state.backend import RunQuery, Tx, Write
from reconciler.state.base import (
    AppliedRecord,
    AppliedSummary,
    LockInfo,
    RunRecord,
    check_takeover,
)
from reconciler.state.git import layout as lay
from reconciler.state.git.refs import Changes, RefStore, Snapshot
from reconciler.state.git.tx import SnapshotTx

T = TypeVar("T")
_Summary = tuple[InstanceKey, str, str, dict[str, str | None]]


class GitBackend:
    """`git://refs/...`: see the package docstring for layout and concurrency."""

    def __init__(self, repo_root: Path, ref: str, *, url: str | None = None) -> None:
        self.url = url or f"git://{ref}"
        self.ref = ref
        try:
            repo = git.Repo(repo_root, search_parent_directories=True)
        except (InvalidGitRepositoryError, NoSuchPathError):
            raise ConfigError(
                f"state {self.url} needs the manifests repo {repo_root} to be a git "
                "repository (git init), or use sqlite:///.reconciler/state.db"
            ) from None
        try:
            current = None if repo.head.is_detached else repo.head.reference.path
        except (TypeError, ValueError):
            current = None
        if current == ref:
            repo.close()
            raise ConfigError(f"state {self.url} must not be the checked-out branch {ref}")
        remote = "origin" if any(r.name == "origin" for r in repo.remotes) else None
        self._refs = RefStore(repo, ref, url=self.url, remote=remote, validate=self._check_schema)
        self._summary_cache: dict[str, list[_Summary]] = {}
        #: Environments whose lock this backend took: they change only through it.
        self._locked: set[str] = set()
        self._closed = False

    # -- snapshots -------------------------------------------------------------------

    def _check_schema(self, refs: RefStore, snap: Snapshot) -> None:
        meta = self.json(snap, lay.META, refs) or {}
        schema = int(meta.get("schema", lay.SCHEMA_VERSION))
        if schema > lay.SCHEMA_VERSION:
            raise StateError(
                f"state {self.url} has schema {schema}, newer than this reconciler "
                f"understands ({lay.SCHEMA_VERSION}): upgrade reconciler"
            )

    def json(self, snap: Snapshot, path: str, refs: RefStore | None = None) -> Any:
        data = (refs or self._refs).read(snap, path)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise StateError(f"state {self.url}: {path} is not valid JSON") from None

    def _current(self, environment: str | None = None) -> Snapshot:
        """For reads. An environment whose lock this backend holds changes only through
        it: its cached view is current."""
        if self._closed:
            raise StateError(f"state {self.url} is closed")
        snap = self._refs.snap
        if snap is not None and environment is not None and environment in self._locked:
            return snap
        return self._refs.follow_local()

    @staticmethod
    def run_paths(snap: Snapshot) -> dict[str, lay.RunPath]:
        runs = snap.derived.get("runs")
        if runs is None:
            runs = {}
            for path in snap.files:
                rp = lay.parse_run_path(path)
                if rp is not None:
                    runs[rp.run_id] = rp
            snap.derived["runs"] = runs
        return cast(dict[str, lay.RunPath], runs)

    def _write(
        self,
        message: str,
        mutate: Callable[[Snapshot], Changes],
        *,
        watch: list[str] | None = None,
        reevaluate: bool = False,
        fresh: bool = False,
    ) -> None:
        with self._refs.mu:
            if self._closed:
                raise StateError(f"state {self.url} is closed")
            self._refs.write(
                message,
                mutate,
                watch=[] if watch is None else watch,
                reevaluate=reevaluate,
                fresh=fresh,
                seed=self._seed_meta,
                describe_move=self._describe_move,
            )

    def _seed_meta(self, snap: Snapshot) -> Changes:
        """The first commit of a state carries its schema and a fingerprint key."""
        if lay.META in snap.files:
            return {}
        meta = {"schema": lay.SCHEMA_VERSION, "fingerprint_key": secrets.token_hex(32)}
        return {lay.META: lay.dump(meta)}

    def lock_of(self, snap: Snapshot, environment: str) -> LockInfo | None:
        doc = self.json(snap, lay.lock_path(environment))
        return lay.lock_info(doc) if doc is not None else None

    def _describe_move(self, snap: Snapshot, moved: Sequence[str]) -> str:
        for path in moved:
            if path.endswith("/lock.json"):
                lock = self.json(snap, path)
                if lock is None:
                    return "its lock was released"
                return f"lock now held by {lay.lock_info(lock).describe()}"
        return "written by another run: " + ", ".join(moved)

    # -- reads -----------------------------------------------------------------------

    def read(self, snap: Snapshot, path: str) -> bytes | None:
        return self._refs.read(snap, path)

    def serial_of(self, snap: Snapshot, environment: str) -> int:
        data = self._refs.read(snap, lay.serial_path(environment))
        return int(data) if data else 0

    def _buckets(self, snap: Snapshot, environment: str) -> list[str]:
        prefix = lay.buckets_prefix(environment)
        return sorted(p for p in snap.files if p.startswith(prefix))

    def bucket(self, snap: Snapshot, path: str) -> dict[InstanceKey, AppliedRecord]:
        records = (lay.applied_record(d) for d in self.json(snap, path) or [])
        return {r.key: r for r in records}

    def _summaries(self, sha: str) -> list[_Summary]:
        """Parsed once per bucket blob: plan asks for the index of every environment."""
        cached = self._summary_cache.get(sha)
        if cached is None:
            cached = [
                (InstanceKey(d["environment"], d["kind"], d["name"]), d["provider"], d["spec_hash"],
                 d["secret_fingerprints"])
                for d in json.loads(self._refs.blob(sha))
            ]  # fmt: skip
            self._summary_cache[sha] = cached
        return cached

    def serial(self, environment: str) -> int:
        with self._refs.mu:
            return self.serial_of(self._current(environment), environment)

    def serials(self) -> dict[str, int]:
        with self._refs.mu:
            snap = self._current()
            return {
                env: int(self._refs.blob(sha))
                for p, sha in sorted(snap.files.items())
                if (env := lay.serial_env(p)) is not None
            }

    def environments(self) -> list[str]:
        with self._refs.mu:
            snap = self._current()
            envs = {rp.environment for rp in self.run_paths(snap).values()}
            envs.update(env for p in snap.files if (env := lay.applied_env(p)) is not None)
            return sorted(envs)

    def applied(
        self, environment: str, keys: Sequence[InstanceKey] | None
    ) -> dict[InstanceKey, AppliedRecord]:
        with self._refs.mu:
            snap = self._current(environment)
            wanted = None if keys is None else set(keys)
            if wanted is None:
                paths = self._buckets(snap, environment)
            else:
                paths = sorted({lay.bucket_path(k) for k in wanted})
            out: dict[InstanceKey, AppliedRecord] = {}
            for path in paths:
                for key, rec in self.bucket(snap, path).items():
                    if wanted is None or key in wanted:
                        out[key] = rec
            return dict(sorted(out.items()))

    def applied_index(self, environment: str) -> dict[InstanceKey, AppliedSummary]:
        with self._refs.mu:
            snap = self._current(environment)
            out = {}
            for path in self._buckets(snap, environment):
                for key, provider, spec_hash, fps in self._summaries(snap.files[path]):
                    out[key] = AppliedSummary(provider, spec_hash, dict(fps))
            return out

    def runs(self, query: RunQuery) -> list[RunRecord]:
        with self._refs.mu:
            snap = self._current()
            found = sorted(
                (
                    rp
                    for rp in self.run_paths(snap).values()
                    if query.environment in (None, rp.environment)
                    and query.run_id in (None, rp.run_id)
                ),
                reverse=True,
            )
            out: list[RunRecord] = []
            for rp in found:
                if query.limit is not None and len(out) >= query.limit:
                    break
                header = self.json(snap, rp.header)
                if (
                    query.commit not in (None, header["commit"])
                    or query.outcome not in (None, header["outcome"])
                    or header["trigger"] == query.skip_trigger
                ):
                    continue
                changes: list[dict[str, Any]] = []
                for i in itertools.count() if query.changes else ():
                    chunk = self.json(snap, lay.chunk_path(rp.dir, i))
                    if chunk is None:
                        break
                    changes.extend(chunk)
                out.append(lay.run_record(header, changes))
            return out

    def holder(self, environment: str) -> LockInfo | None:
        with self._refs.mu:
            return self.lock_of(self._current(), environment)

    def stored_key(self) -> bytes | None:
        with self._refs.mu:
            meta = self.json(self._current(), lay.META) or {}
            key = meta.get("fingerprint_key")
            return bytes.fromhex(key) if key else None

    # -- writes ----------------------------------------------------------------------

    def transact(self, write: Write, fn: Callable[[Tx], T]) -> T:
        result: list[T] = []
        watch: list[str] = []

        def mutate(snap: Snapshot) -> Changes:
            tx = SnapshotTx(self, snap, watch)
            result[:] = [fn(tx)]
            return tx.changes()

        self._write(write.message, mutate, watch=watch, reevaluate=write.rechecks)
        return result[0]

    def lock(
        self, me: LockInfo, *, break_lock: bool, taken_over: Callable[[Tx, LockInfo], None]
    ) -> None:
        env = me.environment

        def acquire(snap: Snapshot) -> Changes:
            tx = SnapshotTx(self, snap, [])
            holder = tx.lock_row(env)
            if holder is not None and check_takeover(holder, me, break_lock=break_lock):
                taken_over(tx, holder)
            return {**tx.changes(), lay.lock_path(env): lay.dump(lay.lock_json(me))}

        message = f"lock {env} for run {me.run_id} by {me.user}@{me.host}"
        self._write(message, acquire, reevaluate=True, fresh=True)
        self._locked.add(env)

    def unlock(self, me: LockInfo) -> None:
        path = lay.lock_path(me.environment)
        self._locked.discard(me.environment)

        def release(snap: Snapshot) -> Changes:
            return {path: None} if me.same_holder(self.lock_of(snap, me.environment)) else {}

        self._write(f"unlock {me.environment} (run {me.run_id})", release, reevaluate=True)

    def check_lock(self, me: LockInfo) -> LockInfo | None:
        """Against the local ref (one `git rev-parse`): a --break-lock by another process
        sharing this clone shows there at once. One made from another clone shows only
        at this store's next push (every write compares and swaps the remote ref and
        checks the lock); asking the remote before each provider call would cost a fetch
        per change."""
        with self._refs.mu:
            if self._closed:
                raise StateError(f"state {self.url} is closed")
            return self.lock_of(self._refs.follow_local(), me.environment)

    def close(self) -> None:
        with self._refs.mu:
            if self._closed:
                return
            self._closed = True
            self._refs.repo.close()
            self._refs.close()
