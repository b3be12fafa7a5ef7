"""`reconciler history`: runs newest first, with approvers and rollback links."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.engine.context import register_recorded
from reconciler.errors import ReconcilerError
from reconciler.gitrepo import ManifestRepo
from reconciler.session import Session
from reconciler.state.base import RunRecord, StateStore

#: What `counts` tallies: applied changes by action, and failures.
COUNTED = ("create", "update", "replace", "delete", "failed")
#: How a count reads ("1 updated").
COUNT_WORDS = {
    "create": "created",
    "update": "updated",
    "replace": "replaced",
    "delete": "deleted",
    "failed": "failed",
}


@dataclass(frozen=True)
class HistoryRow:
    run: RunRecord
    #: The commit's subject line, when this clone has the commit.
    subject: str | None

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(COUNTED, 0)
        for ch in self.run.changes:
            if ch.outcome == "applied" and ch.action in counts:
                counts[ch.action] += 1
            elif ch.outcome == "failed":
                counts["failed"] += 1
        return counts

    @property
    def applied_by(self) -> str | None:
        """Who ran it (recorded since runs name them; older runs: None)."""
        who = self.run.details.get("applied_by")
        return who if isinstance(who, str) and who else None

    @property
    def summary(self) -> str:
        """The counts in words: "1 created, 2 updated", or "no changes"."""
        c = self.counts
        words = [f"{c[k]} {COUNT_WORDS[k]}" for k in COUNTED if c[k]]
        return ", ".join(words) or "no changes"

    def document(self) -> dict[str, Any]:
        """The documented `history --json` row (docs/history-format.md)."""
        run = self.run
        return {
            "id": run.id,
            "environment": run.environment,
            "started_at": run.started_at.isoformat(),
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            "commit": run.commit,
            "subject": self.subject,
            "trigger": run.trigger,
            "outcome": run.outcome,
            "pull_request": run.pull_request,
            "author": run.author,
            "approvers": list(run.approvers),
            "applied_by": self.applied_by,
            "counts": self.counts,
            "reverted_commits": list(run.reverted_commits),
            "reverted_runs": list(run.reverted_runs),
            "details": run.details,
        }


@dataclass
class HistoryReport:
    rows: list[HistoryRow] = field(default_factory=list)


def history(
    session: Session, environments: Sequence[str] = (), *, limit: int = 50
) -> HistoryReport:
    with session.open_store(read_only=True) as store:
        register_recorded(session, store)
        return collect_history(store, session.repo, environments, limit=limit)


def collect_history(
    store: StateStore,
    repo: ManifestRepo | None,
    environments: Sequence[str] = (),
    *,
    limit: int = 50,
) -> HistoryReport:
    if environments:
        runs = [r for env in environments for r in store.runs(env, limit=limit)]
        runs.sort(key=lambda r: r.started_at, reverse=True)
        runs = runs[:limit]
    else:
        runs = store.runs(None, limit=limit)
    return HistoryReport([HistoryRow(run, _subject(repo, run.commit)) for run in runs])


def _subject(repo: ManifestRepo | None, commit: str | None) -> str | None:
    if repo is None or not commit:
        return None
    try:
        return repo.subject(commit)
    except (ReconcilerError, ValueError):  # a commit from another clone or a pruned branch
        return None  # (GitPython raises ValueError for a full sha it does not have)
