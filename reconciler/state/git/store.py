"""`git://REF` store semantics: the StateStore protocol over a compare-and-swapped ref.

Every write of a run checks (on the snapshot it commits on) that the environment's lock
is still the one this store took (`HeldLocks.check`), so a broken lock stops the old
holder at its next write. Read-only stores fetch but never commit or push.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import git
from git.exc import InvalidGitRepositoryError, NoSuchPathError

from reconciler.errors import ConfigError, StateError
from reconciler.instances import InstanceKey
from reconciler.state.base import (
    AppliedRecord,
    AppliedSummary,
    ChangeRecord,
    EnvironmentState,
    HeldLocks,
    LockInfo,
    RunRecord,
    already_has_state,
    check_takeover,
    fingerprint_key_from_env,
    holding,
    other_key_error,
    read_only_error,
    this_process,
)
from reconciler.state.git import layout as lay
from reconciler.state.git.refs import Changes, RefStore, Snapshot

_Summary = tuple[InstanceKey, str, str, dict[str, str | None]]


class GitState:
    """`git://refs/...`: see the package docstring for layout and concurrency."""

    def __init__(
        self,
        repo_root: Path,
        ref: str,
        *,
        env: Mapping[str, str],
        url: str | None = None,
        read_only: bool = False,
    ) -> None:
        self.url = url or f"git://{ref}"
        self.ref = ref
        self.read_only = read_only
        self._env = dict(env)
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
        #: Environments this store holds the lock of, and the lock it took.
        self._held = HeldLocks()
        self._closed = False

    # -- snapshots -------------------------------------------------------------------

    def _check_schema(self, refs: RefStore, snap: Snapshot) -> None:
        meta = self._json(snap, lay.META, refs) or {}
        schema = int(meta.get("schema", lay.SCHEMA_VERSION))
        if schema > lay.SCHEMA_VERSION:
            raise StateError(
                f"state {self.url} has schema {schema}, newer than this reconciler "
                f"understands ({lay.SCHEMA_VERSION}): upgrade reconciler"
            )

    def _json(self, snap: Snapshot, path: str, refs: RefStore | None = None) -> Any:
        data = (refs or self._refs).read(snap, path)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise StateError(f"state {self.url}: {path} is not valid JSON") from None

    def _current(self, environment: str | None = None) -> Snapshot:
        """For reads. An environment whose lock this store holds changes only through it:
        its cached view is current."""
        if self._closed:
            raise StateError(f"state {self.url} is closed")
        snap = self._refs.snap
        if snap is not None and environment is not None and environment in self._held:
            return snap
        return self._refs.follow_local()

    @staticmethod
    def _runs(snap: Snapshot) -> dict[str, lay.RunPath]:
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
        watch: Sequence[str] = (),
        reevaluate: bool = False,
        fresh: bool = False,
    ) -> None:
        if self.read_only:
            raise read_only_error(self.url, message)
        with self._refs.mu:
            if self._closed:
                raise StateError(f"state {self.url} is closed")
            self._refs.write(
                message,
                mutate,
                watch=watch,
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

    def _lock_of(self, snap: Snapshot, environment: str) -> LockInfo | None:
        doc = self._json(snap, lay.lock_path(environment))
        return lay.lock_info(doc) if doc is not None else None

    def _check_held(self, snap: Snapshot, environment: str) -> None:
        """A run holding the lock may only write while the lock is still its own."""
        if environment in self._held:
            self._held.check(environment, self._lock_of(snap, environment))

    def _find_run(self, run_id: str) -> lay.RunPath:
        with self._refs.mu:
            rp = self._runs(self._refs.snap or self._current()).get(run_id)
            if rp is None:
                rp = self._runs(self._current()).get(run_id)
            if rp is None:
                raise StateError(f"state {self.url}: no run {run_id} (begin_run first)")
            return rp

    def _find_run_in(self, snap: Snapshot, run_id: str) -> lay.RunPath:
        rp = self._runs(snap).get(run_id)
        if rp is None:
            raise StateError(f"state {self.url}: no run {run_id} (begin_run first)")
        return rp

    def _describe_move(self, snap: Snapshot, moved: Sequence[str]) -> str:
        for path in moved:
            if path.endswith("/lock.json"):
                lock = self._json(snap, path)
                if lock is None:
                    return "its lock was released"
                return f"lock now held by {lay.lock_info(lock).describe()}"
        return "written by another run: " + ", ".join(moved)

    # -- reads -----------------------------------------------------------------------

    def _serial_of(self, snap: Snapshot, environment: str) -> int:
        data = self._refs.read(snap, lay.serial_path(environment))
        return int(data) if data else 0

    def _buckets(self, snap: Snapshot, environment: str) -> list[str]:
        prefix = lay.buckets_prefix(environment)
        return sorted(p for p in snap.files if p.startswith(prefix))

    def _bucket(self, snap: Snapshot, path: str) -> dict[InstanceKey, AppliedRecord]:
        records = (lay.applied_record(d) for d in self._json(snap, path) or [])
        return {r.key: r for r in records}

    def _applied_of(
        self, snap: Snapshot, environment: str, keys: Collection[InstanceKey] | None = None
    ) -> dict[InstanceKey, AppliedRecord]:
        if keys is None:
            paths = self._buckets(snap, environment)
        else:
            keys = {k for k in map(InstanceKey._make, keys) if k.environment == environment}
            paths = sorted({lay.bucket_path(k) for k in keys})
        out: dict[InstanceKey, AppliedRecord] = {}
        for path in paths:
            for key, rec in self._bucket(snap, path).items():
                if keys is None or key in keys:
                    out[key] = rec
        return dict(sorted(out.items()))

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

    def _run_of(self, snap: Snapshot, rp: lay.RunPath) -> RunRecord:
        changes: list[dict[str, Any]] = []
        for i in itertools.count():
            chunk = self._json(snap, lay.chunk_path(rp.dir, i))
            if chunk is None:
                break
            changes.extend(chunk)
        return lay.run_record(self._json(snap, rp.header), changes)

    def serial(self, environment: str) -> int:
        with self._refs.mu:
            return self._serial_of(self._current(environment), environment)

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
            envs = {rp.environment for rp in self._runs(snap).values()}
            envs.update(env for p in snap.files if (env := lay.applied_env(p)) is not None)
            return sorted(envs)

    def applied(
        self, environment: str, keys: Collection[InstanceKey] | None = None
    ) -> dict[InstanceKey, AppliedRecord]:
        with self._refs.mu:
            return self._applied_of(self._current(environment), environment, keys)

    def applied_index(self, environment: str) -> dict[InstanceKey, AppliedSummary]:
        with self._refs.mu:
            snap = self._current(environment)
            out = {}
            for path in self._buckets(snap, environment):
                for key, provider, spec_hash, fps in self._summaries(snap.files[path]):
                    out[key] = AppliedSummary(provider, spec_hash, dict(fps))
            return out

    def runs(self, environment: str | None = None, limit: int | None = None) -> list[RunRecord]:
        with self._refs.mu:
            snap = self._current()
            paths = sorted(
                (rp for rp in self._runs(snap).values() if environment in (None, rp.environment)),
                reverse=True,
            )
            if limit is not None:
                paths = paths[: max(int(limit), 0)]
            return [self._run_of(snap, rp) for rp in paths]

    def run(self, run_id: str) -> RunRecord | None:
        with self._refs.mu:
            snap = self._current()
            rp = self._runs(snap).get(run_id)
            return self._run_of(snap, rp) if rp else None

    def runs_for_commit(self, commit: str) -> list[RunRecord]:
        with self._refs.mu:
            snap = self._current()
            return [
                self._run_of(snap, rp)
                for rp in sorted(self._runs(snap).values(), reverse=True)
                if self._json(snap, rp.header)["commit"] == commit
            ]

    def last_applied_run(self, environment: str) -> RunRecord | None:
        with self._refs.mu:
            snap = self._current()
            mine = (rp for rp in self._runs(snap).values() if rp.environment == environment)
            for rp in sorted(mine, reverse=True):
                header = self._json(snap, rp.header)
                if header["outcome"] == "applied" and header["trigger"] != "heal":
                    return lay.run_record(header, [])
            return None

    def lock_holder(self, environment: str) -> LockInfo | None:
        with self._refs.mu:
            return self._lock_of(self._current(), environment)

    # -- writes ----------------------------------------------------------------------

    def begin_run(self, run: RunRecord) -> None:
        env = run.environment

        def mutate(snap: Snapshot) -> Changes:
            self._check_held(snap, env)
            runs = self._runs(snap)
            if run.id in runs:
                raise StateError(f"state {self.url}: run {run.id} is already recorded")
            seq = 1 + max((rp.seq for rp in runs.values()), default=0)
            run_dir = lay.run_dir(env, run.started_at, seq, run.id)
            out: Changes = {f"{run_dir}/run.json": lay.dump(lay.run_json(run))}
            for i in range(0, len(run.changes), lay.CHUNK):
                chunk = [lay.change_json(c) for c in run.changes[i : i + lay.CHUNK]]
                out[lay.chunk_path(run_dir, i // lay.CHUNK)] = lay.dump(chunk)
            return out

        self._write(
            f"begin {run.trigger} run {run.id} in {env}",
            mutate,
            watch=[lay.lock_path(env)],
            reevaluate=env in self._held,
        )

    def record_change(
        self,
        run_id: str,
        change: ChangeRecord,
        applied: AppliedRecord | None,
        removed: InstanceKey | None,
    ) -> None:
        if self.read_only:
            raise read_only_error(self.url, f"record a change of run {run_id}")
        env = change.key.environment
        rp = self._find_run(run_id)
        watch = {lay.lock_path(env), lay.serial_path(env), rp.header}
        keys = [k for k in (removed, applied.key if applied else None) if k is not None]
        watch.update(lay.bucket_path(k) for k in keys)
        at = (change.at or datetime.now(UTC)).isoformat()

        def mutate(snap: Snapshot) -> Changes:
            self._check_held(snap, env)
            run_dir = self._find_run_in(snap, run_id).dir
            index = 0
            while lay.chunk_path(run_dir, index + 1) in snap.files:
                index += 1
            chunk = self._json(snap, lay.chunk_path(run_dir, index)) or []
            if len(chunk) >= lay.CHUNK:
                index, chunk = index + 1, []
            chunk.append({**lay.change_json(change), "at": at})
            out: Changes = {lay.chunk_path(run_dir, index): lay.dump(chunk)}
            if applied is None and removed is None:
                return out
            buckets: dict[str, dict[InstanceKey, AppliedRecord]] = {}
            for key in keys:
                if lay.bucket_path(key) not in buckets:
                    buckets[lay.bucket_path(key)] = self._bucket(snap, lay.bucket_path(key))
            if removed is not None:
                buckets[lay.bucket_path(removed)].pop(InstanceKey._make(removed), None)
            if applied is not None:
                buckets[lay.bucket_path(applied.key)][applied.key] = applied
            for path, records in buckets.items():
                out[path] = (
                    lay.dump([lay.applied_json(records[k]) for k in sorted(records)])
                    if records
                    else None
                )
            out[lay.serial_path(env)] = f"{self._serial_of(snap, env) + 1}\n".encode()
            return out

        self._write(
            f"{change.action} {change.key.kind}/{change.key.name} in {env}: {change.outcome} "
            f"(run {run_id})",
            mutate,
            watch=sorted(watch),
            reevaluate=env in self._held,
        )

    def finish_run(self, run_id: str, outcome: str, details: dict[str, Any] | None = None) -> None:
        if self.read_only:
            raise read_only_error(self.url, f"finish run {run_id}")
        rp = self._find_run(run_id)
        env = rp.environment
        finished = datetime.now(UTC).isoformat()

        def mutate(snap: Snapshot) -> Changes:
            self._check_held(snap, env)
            path = self._find_run_in(snap, run_id).header
            doc = self._json(snap, path)
            doc["outcome"] = outcome
            doc["finished_at"] = finished
            if details is not None:
                doc["details"] = details
            return {path: lay.dump(doc)}

        self._write(
            f"finish run {run_id} in {env}: {outcome}",
            mutate,
            watch=[rp.header, lay.lock_path(env)],
            reevaluate=env in self._held,
        )

    def import_environment(self, state: EnvironmentState) -> None:
        env = state.environment
        prefix = lay.env_dir(env) + "/"

        def mutate(snap: Snapshot) -> Changes:
            if any(p.startswith(prefix) and p != lay.lock_path(env) for p in snap.files):
                raise already_has_state(self.url, env)
            out: Changes = {}
            seq = max((rp.seq for rp in self._runs(snap).values()), default=0)
            for run in state.runs:
                seq += 1
                run_dir = lay.run_dir(env, run.started_at, seq, run.id)
                out[f"{run_dir}/run.json"] = lay.dump(lay.run_json(run))
                changes = [
                    {**lay.change_json(c), "at": (c.at or run.started_at).isoformat()}
                    for c in run.changes
                ]
                for i in range(0, len(changes), lay.CHUNK):
                    out[lay.chunk_path(run_dir, i // lay.CHUNK)] = lay.dump(
                        changes[i : i + lay.CHUNK]
                    )
            buckets: dict[str, list[AppliedRecord]] = {}
            for record in sorted(state.applied, key=lambda r: r.key):
                buckets.setdefault(lay.bucket_path(record.key), []).append(record)
            for path, records in buckets.items():
                out[path] = lay.dump([lay.applied_json(r) for r in records])
            if state.serial:
                out[lay.serial_path(env)] = f"{state.serial}\n".encode()
            return out

        self._write(f"import environment {env}", mutate, reevaluate=True, fresh=True)

    # -- locks -----------------------------------------------------------------------

    @contextmanager
    def lock(
        self, environment: str, run_id: str, *, break_lock: bool = False
    ) -> Iterator[LockInfo]:
        me = this_process(environment, run_id)
        path = lay.lock_path(environment)

        def acquire(snap: Snapshot) -> Changes:
            out: Changes = {path: lay.dump(lay.lock_json(me))}
            holder = self._lock_of(snap, environment)
            if holder is None or not check_takeover(holder, me, break_lock=break_lock):
                return out
            rp = self._runs(snap).get(holder.run_id)
            if rp is not None:
                run = self._json(snap, rp.header)
                if run["outcome"] == "running":
                    run["outcome"] = "interrupted"
                    run["finished_at"] = me.acquired_at.isoformat()
                    out[rp.header] = lay.dump(run)
            return out

        self._write(
            f"lock {environment} for run {run_id} by {me.user}@{me.host}",
            acquire,
            reevaluate=True,
            fresh=True,
        )
        with holding(self._held, me, self._unlock):
            yield me

    def check_lock(self, environment: str) -> None:
        """Against the local ref (one `git rev-parse`): a --break-lock by another process
        sharing this clone shows there at once. One made from another clone shows only
        at this store's next push (every write compares and swaps the remote ref and
        checks the lock); asking the remote before each provider call would cost a fetch
        per change."""
        if environment not in self._held:
            return
        with self._refs.mu:
            if self._closed:
                raise StateError(f"state {self.url} is closed")
            self._check_held(self._refs.follow_local(), environment)

    def _unlock(self, me: LockInfo) -> None:
        path = lay.lock_path(me.environment)

        def release(snap: Snapshot) -> Changes:
            return {path: None} if me.same_holder(self._lock_of(snap, me.environment)) else {}

        self._write(f"unlock {me.environment} (run {me.run_id})", release, reevaluate=True)

    # -- keys ------------------------------------------------------------------------

    def fingerprint_key(self, *, create: bool = True) -> bytes | None:
        """RECONCILER_FINGERPRINT_KEY of the injected environment when set (keeps the key
        out of the state, which everyone who can fetch the repo can read), else a random
        key made once per state."""
        if create and self.read_only:
            raise read_only_error(self.url, "create the fingerprint key")
        env_key = fingerprint_key_from_env(self._env)
        if env_key:
            return env_key
        with self._refs.mu:
            meta = self._json(self._current(), lay.META) or {}
            if not meta.get("fingerprint_key") and not create:
                return None
            if not meta.get("fingerprint_key"):

                def add_key(snap: Snapshot) -> Changes:
                    doc = self._json(snap, lay.META) or {"schema": lay.SCHEMA_VERSION}
                    if doc.get("fingerprint_key"):
                        return {}
                    return {lay.META: lay.dump({**doc, "fingerprint_key": secrets.token_hex(32)})}

                self._write("create fingerprint key", add_key, reevaluate=True)
                meta = self._json(cast(Snapshot, self._refs.snap), lay.META)
            return bytes.fromhex(meta["fingerprint_key"])

    def import_fingerprint_key(self, key: bytes) -> None:
        def adopt(snap: Snapshot) -> Changes:
            doc = self._json(snap, lay.META) or {"schema": lay.SCHEMA_VERSION}
            if doc.get("fingerprint_key") not in (None, key.hex()) and any(
                lay.applied_env(p) is not None for p in snap.files
            ):
                raise other_key_error(self.url)
            return {lay.META: lay.dump({**doc, "fingerprint_key": key.hex()})}

        self._write("import fingerprint key", adopt, reevaluate=True, fresh=True)

    def close(self) -> None:
        with self._refs.mu:
            if self._closed:
                return
            self._closed = True
            self._refs.repo.close()
            self._refs.close()
