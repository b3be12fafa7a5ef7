"""The tree of a `git://` state commit: paths and JSON documents, no git.

    meta.json                             schema version, fingerprint key
    environments/<env>/serial             the environment's serial
    environments/<env>/lock.json          present while a run holds the environment
    environments/<env>/applied/<xx>.json  applied records whose sha256("kind/name") starts
                                          with xx, sorted by kind, name
    environments/<env>/runs/<YYYY-MM>/<started>_<seq>_<run-id>/run.json
    environments/<env>/runs/<YYYY-MM>/<started>_<seq>_<run-id>/changes-<nnnn>.json

Buckets and chunks of changes keep each write small however large an environment or a
run grows: a write rewrites one bucket and one chunk, never the whole state.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.instances import InstanceKey
from reconciler.state.base import AppliedRecord, ChangeRecord, LockInfo, RunRecord

#: Bumped whenever this layout changes (meta.json `schema`).
SCHEMA_VERSION = 1
#: Changes per file of a run: a write rewrites one chunk, not the whole run.
CHUNK = 100
META = "meta.json"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,99}")

# -- names and paths -------------------------------------------------------------------


def encode_name(name: str) -> str:
    """A tree entry for any name: itself when plain, else `~` and its UTF-8 in hex."""
    return name if _SAFE_NAME.fullmatch(name) else "~" + name.encode().hex()


def decode_name(entry: str) -> str:
    return bytes.fromhex(entry[1:]).decode() if entry.startswith("~") else entry


def env_dir(env: str) -> str:
    return f"environments/{encode_name(env)}"


def bucket_path(key: InstanceKey) -> str:
    env, kind, name = key
    digest = hashlib.sha256(f"{kind}/{name}".encode()).hexdigest()
    return f"{env_dir(env)}/applied/{digest[:2]}.json"


def buckets_prefix(env: str) -> str:
    return f"{env_dir(env)}/applied/"


def chunk_path(run_dir: str, index: int) -> str:
    return f"{run_dir}/changes-{index:04d}.json"


def serial_path(env: str) -> str:
    return f"{env_dir(env)}/serial"


def lock_path(env: str) -> str:
    return f"{env_dir(env)}/lock.json"


def serial_env(path: str) -> str | None:
    """The environment whose serial `path` is, if it is one."""
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "environments" and parts[2] == "serial":
        return decode_name(parts[1])
    return None


def applied_env(path: str) -> str | None:
    """The environment whose applied bucket `path` is, if it is one."""
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "environments" and parts[2] == "applied":
        return decode_name(parts[1])
    return None


@dataclass(frozen=True, order=True)
class RunPath:
    """A run's directory name sorts like sqlite's `started_at, rowid`: stamp, sequence."""

    stamp: str
    seq: int
    run_id: str
    environment: str
    dir: str

    @property
    def header(self) -> str:
        return f"{self.dir}/run.json"


def run_dir(env: str, started: datetime, seq: int, run_id: str) -> str:
    started = started.astimezone(UTC) if started.tzinfo else started
    return f"{env_dir(env)}/runs/{started:%Y-%m}/{_stamp(started)}_{seq:06d}_{encode_name(run_id)}"


def parse_run_path(path: str) -> RunPath | None:
    parts = path.split("/")
    if len(parts) != 6 or parts[0] != "environments" or parts[2] != "runs":
        return None
    if parts[5] != "run.json":
        return None
    fields = parts[4].split("_", 2)
    if len(fields) != 3 or not fields[1].isdigit():
        return None
    return RunPath(
        fields[0], int(fields[1]), decode_name(fields[2]), decode_name(parts[1]), path[:-9]
    )


def _stamp(at: datetime) -> str:
    return (at.astimezone(UTC) if at.tzinfo else at).strftime("%Y%m%dT%H%M%S%fZ")


# -- JSON ------------------------------------------------------------------------------


def dump(obj: Any) -> bytes:
    """Sorted, indented, one trailing newline: diffs of the state ref stay readable."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def applied_json(r: AppliedRecord) -> dict[str, Any]:
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


def applied_record(d: dict[str, Any]) -> AppliedRecord:
    return AppliedRecord(
        d["environment"], d["kind"], d["name"], d["provider"], d["provider_id"], d["spec"],
        d["spec_hash"], d["secret_fingerprints"], d["commit"], d["run_id"],
        datetime.fromisoformat(d["applied_at"]),
    )  # fmt: skip


def change_json(c: ChangeRecord) -> dict[str, Any]:
    return {
        "key": list(c.key),
        "action": c.action,
        "outcome": c.outcome,
        "error": c.error,
        "provider_id": c.provider_id,
        "before_hash": c.before_hash,
        "after_hash": c.after_hash,
        "at": _iso(c.at),
        "diff": c.diff,
    }


def change_record(d: dict[str, Any]) -> ChangeRecord:
    env, kind, name = d["key"]
    return ChangeRecord(
        InstanceKey(env, kind, name), d["action"], d["outcome"], d["error"], d["provider_id"],
        d["before_hash"], d["after_hash"], _dt(d["at"]), list(d.get("diff") or []),
    )  # fmt: skip


def run_json(r: RunRecord) -> dict[str, Any]:
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
        "policy": r.policy,
    }


def run_record(d: dict[str, Any], changes: list[dict[str, Any]]) -> RunRecord:
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
        changes=[change_record(c) for c in changes],
        details=d["details"],
        policy=d.get("policy"),
    )


def lock_json(info: LockInfo) -> dict[str, Any]:
    return {
        "environment": info.environment,
        "run_id": info.run_id,
        "user": info.user,
        "host": info.host,
        "pid": info.pid,
        "machine": info.machine,
        "acquired_at": info.acquired_at.isoformat(),
    }


def lock_info(d: dict[str, Any]) -> LockInfo:
    return LockInfo(
        d["environment"], d["run_id"], d["user"], d["host"], int(d["pid"]),
        datetime.fromisoformat(d["acquired_at"]), d.get("machine", ""),
    )  # fmt: skip
