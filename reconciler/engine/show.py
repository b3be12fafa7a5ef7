"""`reconciler show RUN`: one recorded run with its changes, field by field. Runs carry
their own diffs (secrets as references), so this needs no manifests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.engine.history import HistoryRow
from reconciler.errors import ReconcilerError
from reconciler.gitrepo import ManifestRepo
from reconciler.session import Session
from reconciler.state.base import ChangeRecord, RunRecord


@dataclass(frozen=True)
class RunReport:
    row: HistoryRow

    @property
    def run(self) -> RunRecord:
        return self.row.run

    def document(self) -> dict[str, Any]:
        """A `history --json` row plus the run's changes and policy (docs/dashboard.md)."""
        return {
            **self.row.document(),
            "changes": [change_document(c) for c in self.run.changes],
            "policy": self.run.policy,
        }


def change_document(c: ChangeRecord) -> dict[str, Any]:
    return {
        "kind": c.key.kind,
        "name": c.key.name,
        "action": c.action,
        "outcome": c.outcome,
        "error": c.error,
        "provider_id": c.provider_id,
        "at": c.at.isoformat() if c.at else None,
        "diff": c.diff,
    }


def show(session: Session, run_id: str) -> RunReport:
    with session.open_store(read_only=True) as store:
        run = store.run(run_id)
    if run is None:
        raise ReconcilerError(
            f"no run {run_id!r} is recorded", details="`reconciler history` lists the runs"
        )
    return RunReport(HistoryRow(run, commit_subject(session.repo, run.commit)))


def commit_subject(repo: ManifestRepo | None, commit: str | None) -> str | None:
    """The commit's subject line, when this clone has the commit."""
    if repo is None or not commit:
        return None
    try:
        return repo.subject(commit)
    except (ReconcilerError, ValueError):  # a commit from another clone or a pruned branch
        return None  # (GitPython raises ValueError for a full sha it does not have)
