"""`git://REF`: state kept as commits on a ref of the manifests repo, so CI needs only git.

Layout of the ref's tree (JSON, sorted keys, one commit per write):

    meta.json                             schema version, fingerprint key
    environments/<env>/serial             the environment's serial
    environments/<env>/lock.json          present while a run holds the environment
    environments/<env>/applied/<xx>.json  applied records whose sha256("kind/name") starts
                                          with xx, sorted by kind, name
    environments/<env>/runs/<YYYY-MM>/<started>_<seq>_<run-id>/run.json
    environments/<env>/runs/<YYYY-MM>/<started>_<seq>_<run-id>/changes-<nnnn>.json

Buckets and chunks of changes keep each write small however large an environment or a
run grows: a write rewrites one bucket and one chunk, never the whole state.

Commits are built with plumbing (hash-object, a private index file, write-tree,
commit-tree), so the user's working tree, index and HEAD are never touched. With an
`origin` remote every write is pushed with a lease (`--force-with-lease=REF:<sha>`);
without one the local ref is compare-and-swapped (`update-ref REF new old`). Writes are
optimistic: a lost race refetches and retries, but only if nothing the write depends on
(its files and the environment's lock) changed meanwhile; otherwise `StateMovedError`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import git
from git.exc import GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from reconciler.errors import (
    ConfigError,
    LockedError,
    ReconcilerError,
    StateError,
    StateMovedError,
)
from reconciler.instances import InstanceKey
from reconciler.state.base import (
    SCHEMA_VERSION,
    AppliedRecord,
    AppliedSummary,
    ChangeRecord,
    LockInfo,
    RunRecord,
)
from reconciler.state.sqlite import _pid_alive, _user

#: How many times a write refetches after losing a compare-and-swap before giving up.
_MAX_ATTEMPTS = 16
#: Changes per file of a run: a write rewrites one chunk, not the whole run.
_CHUNK = 100
_META = "meta.json"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,99}")
_REF = re.compile(r"refs/[A-Za-z0-9._/-]+")
_CREDENTIALS = re.compile(r"://[^/@\s]+@")
#: State commits carry a fixed identity: CI runners often have no user.name configured.
_IDENTITY = {
    "GIT_AUTHOR_NAME": "reconciler",
    "GIT_AUTHOR_EMAIL": "reconciler@localhost",
    "GIT_COMMITTER_NAME": "reconciler",
    "GIT_COMMITTER_EMAIL": "reconciler@localhost",
}
#: Never prompt for credentials (a CI job would hang).
_NO_PROMPT = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": ""}

Changes = dict[str, bytes | None]


def parse_git_url(url: str) -> str:
    """The ref of a `git://refs/...` state URL; anything else is a ConfigError."""
    ref = url.removeprefix("git://")
    bad = (
        not _REF.fullmatch(ref)
        or ref.endswith(("/", ".lock", "."))
        or any(part in ("", ".", "..") or part.startswith(".") for part in ref.split("/"))
        or ".." in ref
    )
    if bad:
        raise ConfigError(
            f"state URL {url!r} needs a ref of the manifests repo, e.g. git://refs/reconciler/state"
        )
    return ref


# -- names and paths -------------------------------------------------------------------


def _enc(name: str) -> str:
    """A tree entry for any name: itself when plain, else `~` and its UTF-8 in hex."""
    return name if _SAFE_NAME.fullmatch(name) else "~" + name.encode().hex()


def _dec(entry: str) -> str:
    return bytes.fromhex(entry[1:]).decode() if entry.startswith("~") else entry


def _env_dir(env: str) -> str:
    return f"environments/{_enc(env)}"


def _bucket_path(key: InstanceKey) -> str:
    env, kind, name = key
    digest = hashlib.sha256(f"{kind}/{name}".encode()).hexdigest()
    return f"{_env_dir(env)}/applied/{digest[:2]}.json"


def _chunk_path(run_dir: str, index: int) -> str:
    return f"{run_dir}/changes-{index:04d}.json"


def _serial_path(env: str) -> str:
    return f"{_env_dir(env)}/serial"


def _lock_path(env: str) -> str:
    return f"{_env_dir(env)}/lock.json"


@dataclass(frozen=True, order=True)
class _RunPath:
    """A run's directory name sorts like sqlite's `started_at, rowid`: stamp, sequence."""

    stamp: str
    seq: int
    run_id: str
    environment: str
    dir: str

    @property
    def header(self) -> str:
        return f"{self.dir}/run.json"


def _parse_run_path(path: str) -> _RunPath | None:
    parts = path.split("/")
    if len(parts) != 6 or parts[0] != "environments" or parts[2] != "runs":
        return None
    if parts[5] != "run.json":
        return None
    fields = parts[4].split("_", 2)
    if len(fields) != 3 or not fields[1].isdigit():
        return None
    return _RunPath(fields[0], int(fields[1]), _dec(fields[2]), _dec(parts[1]), path[:-9])


def _stamp(at: datetime) -> str:
    return (at.astimezone(UTC) if at.tzinfo else at).strftime("%Y%m%dT%H%M%S%fZ")


# -- JSON ------------------------------------------------------------------------------


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _applied_json(r: AppliedRecord) -> dict[str, Any]:
    return {
        "environment": r.environment,
        "kind": r.kind,
        "name": r.name,
        "provider": r.provider,
        "provider_id": r.provider_id,
        "spec": r.spec,
        "spec_hash": r.spec_hash,
        "secret_fingerprints": r.secret_fingerprints,
        "commit": r.commit,
        "run_id": r.run_id,
        "applied_at": r.applied_at.isoformat(),
    }


def _applied_record(d: dict[str, Any]) -> AppliedRecord:
    return AppliedRecord(
        d["environment"], d["kind"], d["name"], d["provider"], d["provider_id"], d["spec"],
        d["spec_hash"], d["secret_fingerprints"], d["commit"], d["run_id"],
        datetime.fromisoformat(d["applied_at"]),
    )  # fmt: skip


def _change_json(c: ChangeRecord) -> dict[str, Any]:
    return {
        "key": list(c.key),
        "action": c.action,
        "outcome": c.outcome,
        "error": c.error,
        "provider_id": c.provider_id,
        "before_hash": c.before_hash,
        "after_hash": c.after_hash,
        "at": _iso(c.at),
    }


def _change_record(d: dict[str, Any]) -> ChangeRecord:
    env, kind, name = d["key"]
    return ChangeRecord(
        InstanceKey(env, kind, name), d["action"], d["outcome"], d["error"], d["provider_id"],
        d["before_hash"], d["after_hash"], _dt(d["at"]),
    )  # fmt: skip


def _run_json(r: RunRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "environment": r.environment,
        "commit": r.commit,
        "trigger": r.trigger,
        "started_at": r.started_at.isoformat(),
        "finished_at": _iso(r.finished_at),
        "outcome": r.outcome,
        "pull_request": r.pull_request,
        "author": r.author,
        "approvers": list(r.approvers),
        "reverted_commits": list(r.reverted_commits),
        "reverted_runs": list(r.reverted_runs),
        "details": r.details,
    }


def _run_record(d: dict[str, Any], changes: list[dict[str, Any]]) -> RunRecord:
    return RunRecord(
        id=d["id"],
        environment=d["environment"],
        commit=d["commit"],
        trigger=d["trigger"],
        started_at=datetime.fromisoformat(d["started_at"]),
        finished_at=_dt(d["finished_at"]),
        outcome=d["outcome"],
        pull_request=d["pull_request"],
        author=d["author"],
        approvers=list(d["approvers"]),
        reverted_commits=list(d["reverted_commits"]),
        reverted_runs=list(d["reverted_runs"]),
        changes=[_change_record(c) for c in changes],
        details=d["details"],
    )


def _lock_json(info: LockInfo, machine: str) -> dict[str, Any]:
    return {
        "environment": info.environment,
        "run_id": info.run_id,
        "user": info.user,
        "host": info.host,
        "pid": info.pid,
        "machine": machine,
        "acquired_at": info.acquired_at.isoformat(),
    }


def _lock_info(d: dict[str, Any]) -> LockInfo:
    return LockInfo(
        d["environment"], d["run_id"], d["user"], d["host"], int(d["pid"]),
        datetime.fromisoformat(d["acquired_at"]),
    )  # fmt: skip


def _machine() -> str:
    """Boot and pid namespace: a pid is only comparable inside the same one. Containers
    sharing a hostname would otherwise take over each other's live locks."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


# -- the store -------------------------------------------------------------------------


@dataclass
class _Snapshot:
    """The tree of one state commit: path -> blob sha. Blobs are read lazily."""

    sha: str | None
    files: dict[str, str] = field(default_factory=dict)
    _runs: dict[str, _RunPath] | None = None

    def runs(self) -> dict[str, _RunPath]:
        if self._runs is None:
            self._runs = {}
            for path in self.files:
                rp = _parse_run_path(path)
                if rp is not None:
                    self._runs[rp.run_id] = rp
        return self._runs


class GitState:
    """`git://refs/...`: see the module docstring for layout and concurrency."""

    def __init__(self, repo_root: Path, ref: str, *, url: str | None = None) -> None:
        self.url = url or f"git://{ref}"
        self.ref = ref
        try:
            self._repo = git.Repo(repo_root, search_parent_directories=True)
        except (InvalidGitRepositoryError, NoSuchPathError):
            raise ConfigError(
                f"state {self.url} needs the manifests repo {repo_root} to be a git "
                "repository (git init), or use sqlite:///.reconciler/state.db"
            ) from None
        try:
            current = None if self._repo.head.is_detached else self._repo.head.reference.path
        except (TypeError, ValueError):
            current = None
        if current == ref:
            raise ConfigError(f"state {self.url} must not be the checked-out branch {ref}")
        self._remote = "origin" if any(r.name == "origin" for r in self._repo.remotes) else None
        self._mu = threading.RLock()
        self._tmp = Path(tempfile.mkdtemp(prefix="reconciler-state-"))
        self._index = self._tmp / "index"
        #: The commit the private index holds; "" when unknown (rebuild before use).
        self._index_base: str | None = ""
        self._blobs: dict[str, bytes] = {}
        self._summary_cache: dict[
            str, list[tuple[InstanceKey, str, str, dict[str, str | None]]]
        ] = {}
        self._snap: _Snapshot | None = None
        #: What the remote's ref is believed to be (None: absent): the push lease.
        self._lease: str | None = None
        self._machine = _machine()
        #: Environments this store holds the lock of, and for which run.
        self._held: dict[str, str] = {}
        self._closed = False

    # -- git -------------------------------------------------------------------------

    def _git(
        self, *args: str, env: Mapping[str, str] | None = None, check: bool = True
    ) -> tuple[int, str, str]:
        try:
            out = self._repo.git.execute(
                ["git", *args],
                with_extended_output=True,
                with_exceptions=False,
                env={**_NO_PROMPT, **(env or {})},
            )
        except (GitCommandError, OSError) as e:
            raise StateError(f"state {self.url}: cannot run git: {e}") from None
        status, stdout, stderr = out
        if check and status != 0:
            raise StateError(f"state {self.url}: git {args[0]} failed: {self._why(stderr)}")
        return status, stdout, stderr

    @staticmethod
    def _why(stderr: str) -> str:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        line = next((ln for ln in reversed(lines) if ln.startswith(("fatal", "error"))), None)
        return _CREDENTIALS.sub("://***@", line or (lines[-1] if lines else "unknown error"))

    def _local_ref(self) -> str | None:
        status, out, _ = self._git("rev-parse", "-q", "--verify", self.ref, check=False)
        return out.strip() if status == 0 else None

    def _blob(self, sha: str) -> bytes:
        data = self._blobs.get(sha)
        if data is None:
            try:
                data = self._repo.git.get_object_data(sha)[3]
            except (GitCommandError, ValueError, OSError) as e:
                raise StateError(f"state {self.url}: cannot read object {sha}: {e}") from None
            self._blobs[sha] = data
        return data

    def _json(self, snap: _Snapshot, path: str) -> Any:
        sha = snap.files.get(path)
        if sha is None:
            return None
        try:
            return json.loads(self._blob(sha))
        except ValueError:
            raise StateError(f"state {self.url}: {path} is not valid JSON") from None

    # -- loading ---------------------------------------------------------------------

    def _load(self, sha: str | None) -> _Snapshot:
        if self._snap is not None and self._snap.sha == sha:
            return self._snap
        snap = _Snapshot(sha)
        if sha is not None:
            _, out, _ = self._git("ls-tree", "-r", "-z", "--full-tree", sha)
            for entry in filter(None, out.split("\0")):
                meta, path = entry.split("\t", 1)
                _mode, kind, blob = meta.split(" ")
                if kind == "blob":
                    snap.files[path] = blob
        meta_doc = self._json(snap, _META) or {}
        schema = int(meta_doc.get("schema", SCHEMA_VERSION))
        if schema > SCHEMA_VERSION:
            raise StateError(
                f"state {self.url} has schema {schema}, newer than this reconciler "
                f"understands ({SCHEMA_VERSION}): upgrade reconciler"
            )
        self._snap = snap
        return snap

    def _fetch(self) -> _Snapshot:
        """The remote's ref (when there is a remote), else the local one."""
        if self._remote is not None:
            status, _, err = self._git(
                "fetch", "-q", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                self._remote, f"+{self.ref}:{self.ref}", check=False,
            )  # fmt: skip
            if status == 0:
                self._lease = self._local_ref()
                return self._load(self._lease)
            if "couldn't find remote ref" not in err:
                raise StateError(
                    f"state {self.url}: cannot fetch {self.ref} from {self._remote}: "
                    f"{self._why(err)}"
                )
            # Not published yet: build on any local history, expect the ref to be absent.
            self._lease = None
            return self._load(self._local_ref())
        local = self._local_ref()
        self._lease = local
        return self._load(local)

    def _current(self, environment: str | None = None) -> _Snapshot:
        """For reads: the remote once per store, then whatever the local ref says (other
        local processes update it after each push). An environment whose lock this store
        holds changes only through it: its cached view is current."""
        if self._closed:
            raise StateError(f"state {self.url} is closed")
        if self._snap is None:
            return self._fetch()
        if environment is not None and environment in self._held:
            return self._snap
        local = self._local_ref()
        if local != self._snap.sha and local is not None:
            self._lease = local
            return self._load(local)
        return self._snap

    # -- writing ---------------------------------------------------------------------

    def _hash(self, blobs: Mapping[str, bytes]) -> dict[str, str]:
        if not blobs:
            return {}
        names = []
        for i, data in enumerate(blobs.values()):
            name = str(self._tmp / f"blob{i}")
            Path(name).write_bytes(data)
            names.append(name)
        _, out, _ = self._git("hash-object", "-w", "--no-filters", "--", *names)
        shas = out.split()
        for sha, data in zip(shas, blobs.values(), strict=True):
            self._blobs[sha] = data
        return dict(zip(blobs, shas, strict=True))

    def _commit(self, snap: _Snapshot, changes: Changes, message: str) -> _Snapshot:
        """A commit of `snap` plus `changes`, built in the private index (not yet on the ref)."""
        blobs = self._hash({p: d for p, d in changes.items() if d is not None})
        env = {"GIT_INDEX_FILE": str(self._index)}
        if self._index_base != snap.sha:
            self._index_base = ""
            self._git("read-tree", *([snap.sha] if snap.sha else ["--empty"]), env=env)
        self._index_base = ""  # until the tree is written
        args = ["update-index", "--add"]
        for path, sha in blobs.items():
            args += ["--cacheinfo", f"100644,{sha},{path}"]
        removed = [p for p, d in changes.items() if d is None]
        if removed:
            args += ["--force-remove", "--", *removed]
        self._git(*args, env=env)
        _, tree, _ = self._git("write-tree", env=env)
        parent = ["-p", snap.sha] if snap.sha else []
        _, commit, _ = self._git(
            "commit-tree", "--no-gpg-sign", tree.strip(), *parent, "-m", message,
            env=_IDENTITY,
        )  # fmt: skip
        commit = commit.strip()
        self._index_base = commit
        files = dict(snap.files)
        for path in removed:
            files.pop(path, None)
        files.update(blobs)
        return _Snapshot(commit, files)

    def _swap(self, snap: _Snapshot, commit: str) -> bool:
        """Compare-and-swap the ref from `snap` to `commit`. False when it moved; the store
        has then refetched the newest state."""
        if self._remote is None:
            status, _, err = self._git(
                "update-ref", "-m", "reconciler state", self.ref, commit, snap.sha or "",
                check=False,
            )  # fmt: skip
            if status == 0:
                return True
            if self._fetch().sha == snap.sha:
                raise StateError(f"state {self.url}: cannot update {self.ref}: {self._why(err)}")
            return False
        lease = self._lease
        status, _, err = self._git(
            "push", "-q", "--no-verify", "--recurse-submodules=no",
            f"--force-with-lease={self.ref}:{lease or ''}",
            self._remote, f"{commit}:{self.ref}", check=False,
        )  # fmt: skip
        if status != 0:
            self._fetch()
            if self._lease == lease:
                raise StateError(
                    f"state {self.url}: cannot push {self.ref} to {self._remote}: {self._why(err)}"
                )
            return False
        # Mirror locally; if another local process moved it meanwhile, theirs stays.
        self._git(
            "update-ref", "-m", "reconciler state", self.ref, commit, snap.sha or "", check=False
        )
        return True

    def _write(
        self,
        message: str,
        mutate: Callable[[_Snapshot], Changes],
        *,
        watch: Sequence[str] = (),
        reevaluate: bool = False,
        fresh: bool = False,
    ) -> None:
        """Apply `mutate` to the newest state and CAS it in. After a lost race the write is
        recomputed on the new state if `reevaluate` (the mutation checks for itself that
        it still may), else only if none of the `watch` paths changed."""
        with self._mu:
            if self._closed:
                raise StateError(f"state {self.url} is closed")
            snap = self._fetch() if fresh or self._snap is None else self._snap
            seen = {p: snap.files.get(p) for p in watch}
            for attempt in range(_MAX_ATTEMPTS):
                moved = [p for p in watch if snap.files.get(p) != seen[p]]
                if moved and not reevaluate:
                    raise StateMovedError(
                        f"state moved: {self.ref} changed under this write "
                        f"({self._describe_move(snap, moved)}); re-plan and apply again"
                    )
                changes = {
                    p: d
                    for p, d in mutate(snap).items()
                    if (d is None and p in snap.files)
                    or (d is not None and (p not in snap.files or self._blob(snap.files[p]) != d))
                }
                if not changes:
                    return
                if _META not in snap.files and _META not in changes:
                    changes[_META] = _dump(
                        {"schema": SCHEMA_VERSION, "fingerprint_key": secrets.token_hex(32)}
                    )
                new = self._commit(snap, changes, message)
                if self._swap(snap, cast(str, new.sha)):
                    self._snap = new
                    self._lease = new.sha
                    return
                snap = cast(_Snapshot, self._snap)
                # Writers of other environments share the ref: back off with jitter.
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            raise StateMovedError(
                f"state moved: {self.ref} kept changing under this write ({message}); "
                "re-plan and apply again"
            )

    def _check_held(self, snap: _Snapshot, environment: str) -> None:
        """A run holding the lock may only write while the lock is still its own."""
        held = self._held.get(environment)
        if held is None:
            return
        doc = self._json(snap, _lock_path(environment))
        if doc is None or doc["run_id"] != held:
            now = "it was released" if doc is None else f"now {_lock_info(doc).describe()}"
            raise StateMovedError(
                f"state moved: the lock of {environment!r} held by run {held} was broken "
                f"({now}); re-plan and apply again"
            )

    def _find_run(self, run_id: str) -> _RunPath:
        with self._mu:
            rp = (self._snap or self._current()).runs().get(run_id)
            if rp is None:
                rp = self._current().runs().get(run_id)
            if rp is None:
                raise StateError(f"state {self.url}: no run {run_id} (begin_run first)")
            return rp

    def _describe_move(self, snap: _Snapshot, moved: Sequence[str]) -> str:
        for path in moved:
            if path.endswith("/lock.json"):
                lock = self._json(snap, path)
                if lock is None:
                    return "its lock was released"
                return f"lock now held by {_lock_info(lock).describe()}"
        return "written by another run: " + ", ".join(moved)

    # -- reads -----------------------------------------------------------------------

    def _serial_of(self, snap: _Snapshot, environment: str) -> int:
        sha = snap.files.get(_serial_path(environment))
        return int(self._blob(sha)) if sha else 0

    def _buckets(self, snap: _Snapshot, environment: str) -> list[str]:
        prefix = f"{_env_dir(environment)}/applied/"
        return sorted(p for p in snap.files if p.startswith(prefix))

    def _bucket(self, snap: _Snapshot, path: str) -> dict[InstanceKey, AppliedRecord]:
        records = (_applied_record(d) for d in self._json(snap, path) or [])
        return {r.key: r for r in records}

    def _applied_of(
        self, snap: _Snapshot, environment: str, keys: Collection[InstanceKey] | None = None
    ) -> dict[InstanceKey, AppliedRecord]:
        if keys is None:
            paths = self._buckets(snap, environment)
        else:
            keys = {k for k in map(InstanceKey._make, keys) if k.environment == environment}
            paths = sorted({_bucket_path(k) for k in keys})
        out: dict[InstanceKey, AppliedRecord] = {}
        for path in paths:
            for key, rec in self._bucket(snap, path).items():
                if keys is None or key in keys:
                    out[key] = rec
        return dict(sorted(out.items()))

    def _summaries(self, sha: str) -> list[tuple[InstanceKey, str, str, dict[str, str | None]]]:
        """Parsed once per bucket blob: plan asks for the index of every environment."""
        cached = self._summary_cache.get(sha)
        if cached is None:
            cached = [
                (InstanceKey(d["environment"], d["kind"], d["name"]), d["provider"], d["spec_hash"],
                 d["secret_fingerprints"])
                for d in json.loads(self._blob(sha))
            ]  # fmt: skip
            self._summary_cache[sha] = cached
        return cached

    def _run_of(self, snap: _Snapshot, rp: _RunPath) -> RunRecord:
        changes: list[dict[str, Any]] = []
        for i in itertools.count():
            chunk = self._json(snap, _chunk_path(rp.dir, i))
            if chunk is None:
                break
            changes.extend(chunk)
        return _run_record(self._json(snap, rp.header), changes)

    def serial(self, environment: str) -> int:
        with self._mu:
            return self._serial_of(self._current(environment), environment)

    def serials(self) -> dict[str, int]:
        with self._mu:
            snap = self._current()
            return {
                _dec(p.split("/")[1]): int(self._blob(sha))
                for p, sha in sorted(snap.files.items())
                if p.startswith("environments/") and p.endswith("/serial") and p.count("/") == 2
            }

    def environments(self) -> list[str]:
        with self._mu:
            snap = self._current()
            envs = {rp.environment for rp in snap.runs().values()}
            envs.update(
                _dec(p.split("/")[1])
                for p in snap.files
                if p.startswith("environments/") and p.split("/")[2] == "applied"
            )
            return sorted(envs)

    def applied(
        self, environment: str, keys: Collection[InstanceKey] | None = None
    ) -> dict[InstanceKey, AppliedRecord]:
        with self._mu:
            return self._applied_of(self._current(environment), environment, keys)

    def applied_index(self, environment: str) -> dict[InstanceKey, AppliedSummary]:
        with self._mu:
            snap = self._current(environment)
            out = {}
            for path in self._buckets(snap, environment):
                for key, provider, spec_hash, fps in self._summaries(snap.files[path]):
                    out[key] = AppliedSummary(provider, spec_hash, dict(fps))
            return out

    def runs(self, environment: str | None = None, limit: int | None = None) -> list[RunRecord]:
        with self._mu:
            snap = self._current()
            paths = sorted(
                (rp for rp in snap.runs().values() if environment in (None, rp.environment)),
                reverse=True,
            )
            if limit is not None:
                paths = paths[: max(int(limit), 0)]
            return [self._run_of(snap, rp) for rp in paths]

    def run(self, run_id: str) -> RunRecord | None:
        with self._mu:
            snap = self._current()
            rp = snap.runs().get(run_id)
            return self._run_of(snap, rp) if rp else None

    def runs_for_commit(self, commit: str) -> list[RunRecord]:
        with self._mu:
            snap = self._current()
            return [
                self._run_of(snap, rp)
                for rp in sorted(snap.runs().values(), reverse=True)
                if self._json(snap, rp.header)["commit"] == commit
            ]

    def lock_holder(self, environment: str) -> LockInfo | None:
        with self._mu:
            lock = self._json(self._current(), _lock_path(environment))
            return _lock_info(lock) if lock else None

    # -- writes ----------------------------------------------------------------------

    def begin_run(self, run: RunRecord) -> None:
        env = run.environment
        started = run.started_at.astimezone(UTC) if run.started_at.tzinfo else run.started_at

        def mutate(snap: _Snapshot) -> Changes:
            self._check_held(snap, env)
            if run.id in snap.runs():
                raise StateError(f"state {self.url}: run {run.id} is already recorded")
            seq = 1 + max((rp.seq for rp in snap.runs().values()), default=0)
            run_dir = (
                f"{_env_dir(env)}/runs/{started:%Y-%m}/{_stamp(started)}_{seq:06d}_{_enc(run.id)}"
            )
            out: Changes = {f"{run_dir}/run.json": _dump(_run_json(run))}
            for i in range(0, len(run.changes), _CHUNK):
                chunk = [_change_json(c) for c in run.changes[i : i + _CHUNK]]
                out[_chunk_path(run_dir, i // _CHUNK)] = _dump(chunk)
            return out

        self._write(
            f"begin {run.trigger} run {run.id} in {env}",
            mutate,
            watch=[_lock_path(env)],
            reevaluate=env in self._held,
        )

    def record_change(
        self,
        run_id: str,
        change: ChangeRecord,
        applied: AppliedRecord | None,
        removed: InstanceKey | None,
    ) -> None:
        env = change.key.environment
        rp = self._find_run(run_id)
        watch = {_lock_path(env), _serial_path(env), rp.header}
        keys = [k for k in (removed, applied.key if applied else None) if k is not None]
        watch.update(_bucket_path(k) for k in keys)
        at = (change.at or datetime.now(UTC)).isoformat()

        def mutate(snap: _Snapshot) -> Changes:
            self._check_held(snap, env)
            run_dir = self._find_run_in(snap, run_id).dir
            index = 0
            while _chunk_path(run_dir, index + 1) in snap.files:
                index += 1
            chunk = self._json(snap, _chunk_path(run_dir, index)) or []
            if len(chunk) >= _CHUNK:
                index, chunk = index + 1, []
            chunk.append({**_change_json(change), "at": at})
            out: Changes = {_chunk_path(run_dir, index): _dump(chunk)}
            if applied is None and removed is None:
                return out
            buckets: dict[str, dict[InstanceKey, AppliedRecord]] = {}
            for key in keys:
                if _bucket_path(key) not in buckets:
                    buckets[_bucket_path(key)] = self._bucket(snap, _bucket_path(key))
            if removed is not None:
                buckets[_bucket_path(removed)].pop(removed, None)
            if applied is not None:
                buckets[_bucket_path(applied.key)][applied.key] = applied
            for path, records in buckets.items():
                out[path] = (
                    _dump([_applied_json(records[k]) for k in sorted(records)]) if records else None
                )
            out[_serial_path(env)] = f"{self._serial_of(snap, env) + 1}\n".encode()
            return out

        self._write(
            f"{change.action} {change.key.kind}/{change.key.name} in {env}: {change.outcome} "
            f"(run {run_id})",
            mutate,
            watch=sorted(watch),
            reevaluate=env in self._held,
        )

    def _find_run_in(self, snap: _Snapshot, run_id: str) -> _RunPath:
        rp = snap.runs().get(run_id)
        if rp is None:
            raise StateError(f"state {self.url}: no run {run_id} (begin_run first)")
        return rp

    def finish_run(self, run_id: str, outcome: str, details: dict[str, Any] | None = None) -> None:
        rp = self._find_run(run_id)
        env = rp.environment
        finished = datetime.now(UTC).isoformat()

        def mutate(snap: _Snapshot) -> Changes:
            self._check_held(snap, env)
            path = self._find_run_in(snap, run_id).header
            doc = self._json(snap, path)
            doc["outcome"] = outcome
            doc["finished_at"] = finished
            if details is not None:
                doc["details"] = details
            return {path: _dump(doc)}

        self._write(
            f"finish run {run_id} in {env}: {outcome}",
            mutate,
            watch=[rp.header, _lock_path(env)],
            reevaluate=env in self._held,
        )

    # -- locks -----------------------------------------------------------------------

    @contextmanager
    def lock(
        self, environment: str, run_id: str, *, break_lock: bool = False
    ) -> Iterator[LockInfo]:
        me = LockInfo(
            environment, run_id, _user(), socket.gethostname(), os.getpid(), datetime.now(UTC)
        )
        path = _lock_path(environment)

        def acquire(snap: _Snapshot) -> Changes:
            doc = self._json(snap, path)
            out: Changes = {path: _dump(_lock_json(me, self._machine))}
            if doc is None:
                return out
            holder = _lock_info(doc)
            stale = (
                holder.host == me.host
                and doc.get("machine", "") == self._machine
                and not _pid_alive(holder.pid)
            )
            if not (stale or break_lock):
                raise LockedError(
                    f"environment {environment!r} is locked by {holder.describe()}; "
                    "if that run crashed on another machine, re-run with --break-lock"
                )
            rp = snap.runs().get(holder.run_id)
            if rp is not None:
                run = self._json(snap, rp.header)
                if run["outcome"] == "running":
                    run["outcome"] = "interrupted"
                    run["finished_at"] = me.acquired_at.isoformat()
                    out[rp.header] = _dump(run)
            return out

        self._write(
            f"lock {environment} for run {run_id} by {me.user}@{me.host}",
            acquire,
            reevaluate=True,
            fresh=True,
        )
        self._held[environment] = run_id
        try:
            yield me
        except BaseException:
            # The original error matters more; a lock left behind goes stale by itself.
            with suppress(ReconcilerError):
                self._unlock(environment, run_id)
            raise
        self._unlock(environment, run_id)

    def _unlock(self, environment: str, run_id: str) -> None:
        path = _lock_path(environment)
        if self._held.get(environment) == run_id:
            del self._held[environment]

        def release(snap: _Snapshot) -> Changes:
            doc = self._json(snap, path)
            return {path: None} if doc is not None and doc["run_id"] == run_id else {}

        self._write(f"unlock {environment} (run {run_id})", release, reevaluate=True)

    # -- keys ------------------------------------------------------------------------

    def fingerprint_key(self, *, create: bool = True) -> bytes | None:
        """RECONCILER_FINGERPRINT_KEY when set (keeps the key out of the state, which
        everyone who can fetch the repo can read), else a random key made once per state."""
        env_key = os.environ.get("RECONCILER_FINGERPRINT_KEY")
        if env_key:
            return env_key.encode()
        with self._mu:
            meta = self._json(self._current(), _META) or {}
            if not meta.get("fingerprint_key") and not create:
                return None
            if not meta.get("fingerprint_key"):

                def add_key(snap: _Snapshot) -> Changes:
                    doc = self._json(snap, _META) or {"schema": SCHEMA_VERSION}
                    if doc.get("fingerprint_key"):
                        return {}
                    return {_META: _dump({**doc, "fingerprint_key": secrets.token_hex(32)})}

                self._write("create fingerprint key", add_key, reevaluate=True)
                meta = self._json(cast(_Snapshot, self._snap), _META)
            return bytes.fromhex(meta["fingerprint_key"])

    def close(self) -> None:
        with self._mu:
            if self._closed:
                return
            self._closed = True
            self._repo.close()
            shutil.rmtree(self._tmp, ignore_errors=True)
