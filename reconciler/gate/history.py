"""The manifests as they were at past commits, for the gate: which commits change an
environment's desired state, and each environment's policy at a commit.

Loading a commit is a whole load (blobs at that commit, its own reconciler.yaml); each is
loaded at most once per command, and only when one of the files it read changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from reconciler.config import Settings
from reconciler.errors import ReconcilerError
from reconciler.gitrepo import ManifestRepo
from reconciler.instances import canonical_json
from reconciler.load import Loaded, load
from reconciler.policy import Policy, policy_at
from reconciler.redaction import Register, to_backstop


@dataclass
class Snapshot:
    """What the gate needs of one commit: per environment a signature of its desired
    state (instances and policy) and its policy; no `loaded` when the commit does not
    load. Signatures are made when first asked for: most commands ask for few."""

    loaded: Loaded | None
    error: str | None = None
    _signatures: dict[str, str | None] = field(default_factory=dict)

    def signature(self, environment: str) -> str | None:
        if environment not in self._signatures:
            self._signatures[environment] = _signature(self.loaded, environment)
        return self._signatures[environment]


class History:
    """Snapshots of commits, loaded lazily and cached."""

    def __init__(
        self, settings: Settings, repo: ManifestRepo, register: Register = to_backstop
    ) -> None:
        self._settings = settings
        #: Learns the secrets of each commit loaded: the session's redactor.
        self._register = register
        self._repo = repo
        self._snapshots: dict[str, Snapshot] = {}

    def remember(self, loaded: Loaded) -> None:
        """The target, loaded already by the command: no need to load it twice."""
        if loaded.commit is not None and not loaded.dirty:
            self._snapshots[loaded.commit] = Snapshot(loaded)

    def snapshot(self, sha: str) -> Snapshot:
        if sha not in self._snapshots:
            try:
                self._snapshots[sha] = Snapshot(
                    load(self._settings, sha, repo=self._repo, register=self._register)
                )
            except ReconcilerError as e:  # a broken commit in the range: judged as a change
                self._snapshots[sha] = Snapshot(None, e.message)
        return self._snapshots[sha]

    def changes(self, sha: str, environment: str) -> bool:
        """Whether `sha` changes `environment`'s desired state against its first parent
        (a commit that does not load counts as changing it: fail closed)."""
        parent = self._repo.first_parent(sha)
        if parent is not None and parent in self._snapshots and sha not in self._snapshots:
            read = self._snapshots[parent].loaded
            if read is not None and not _touches(self._repo.changed_paths(sha), read.paths_read):
                self._snapshots[sha] = self._snapshots[parent]
                return False
        now = self.snapshot(sha)
        before = self.snapshot(parent) if parent is not None else Snapshot(None)
        if now.loaded is None or (parent is not None and before.loaded is None):
            return True
        return now.signature(environment) != before.signature(environment)

    def policy(self, sha: str, environment: str) -> Policy | None:
        """`environment`'s policy at `sha`; None when it is not declared there."""
        snap = self.snapshot(sha)
        if snap.loaded is None:
            raise ReconcilerError(f"the manifests at {sha[:12]} do not load: {snap.error}")
        if environment not in snap.loaded.desired.environments:
            return None
        loaded = snap.loaded
        return policy_at(loaded.desired, loaded.approvals, environment, f"commit {sha[:12]}")

    def policy_steps(self, before: str, environment: str) -> list[tuple[str, Policy | None]]:
        """The commits on `before`'s first-parent chain (itself included) that declared,
        changed or removed `environment`'s policy, oldest first, with the policy after
        each. A commit that does not load declares nothing: it is compared past."""
        steps: list[tuple[str, Policy | None]] = []
        last: Policy | None = None
        for sha in self._repo.ancestry(before, first_parent=True):
            parent = self._repo.first_parent(sha)
            if parent is not None and parent in self._snapshots and sha not in self._snapshots:
                read = self._snapshots[parent].loaded
                if read is not None and not _touches(
                    self._repo.changed_paths(sha), read.paths_read
                ):
                    self._snapshots[sha] = self._snapshots[parent]
                    continue
            if self.snapshot(sha).loaded is None:
                continue
            now = self.policy(sha, environment)
            if (now is None) != (last is None) or (
                now is not None and last is not None and not now.same_as(last)
            ):
                steps.append((sha, now))
            last = now
        return steps


def _signature(loaded: Loaded | None, environment: str) -> str | None:
    if loaded is None or environment not in loaded.desired.environments:
        return None
    desired = loaded.desired
    parts: dict[str, Any] = {
        "policy": policy_at(desired, loaded.approvals, environment, "").document,
        "instances": {
            f"{k.kind}/{k.name}": (inst.provider, inst.hash())
            for k, inst in sorted(desired.instances.get(environment, {}).items())
        },
    }
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


def _touches(changed: list[str], read: tuple[str, ...]) -> bool:
    for path in changed:
        for r in read:
            r = r.strip("/")
            if r in ("", ".") or path == r or path.startswith(r + "/"):
                return True
    return False
