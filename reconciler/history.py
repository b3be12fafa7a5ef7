"""`reconciler history`: runs newest first, with approvers and rollback links."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reconciler.gitrepo import ManifestRepo
from reconciler.state.base import StateStore


def collect_history(
    store: StateStore,
    repo: ManifestRepo | None,
    environments: Sequence[str] = (),
    *,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The documented `history --json` rows (docs/history-format.md)."""
    runs = []
    if environments:
        for env in environments:
            runs.extend(store.runs(env, limit=limit))
        runs.sort(key=lambda r: r.started_at, reverse=True)
        runs = runs[:limit]
    else:
        runs = store.runs(None, limit=limit)
    rows = []
    for run in runs:
        counts = {"create": 0, "update": 0, "replace": 0, "delete": 0, "failed": 0}
        for ch in run.changes:
            if ch.outcome == "applied" and ch.action in counts:
                counts[ch.action] += 1
            elif ch.outcome == "failed":
                counts["failed"] += 1
        subject = None
        if repo is not None and run.commit:
            try:
                subject = repo.subject(run.commit)
            except Exception:  # a commit from another clone or a pruned branch
                subject = None
        rows.append(
            {
                "id": run.id,
                "environment": run.environment,
                "started_at": run.started_at.isoformat(),
                "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                "commit": run.commit,
                "subject": subject,
                "trigger": run.trigger,
                "outcome": run.outcome,
                "pull_request": run.pull_request,
                "author": run.author,
                "approvers": list(run.approvers),
                "counts": counts,
                "reverted_commits": list(run.reverted_commits),
                "reverted_runs": list(run.reverted_runs),
                "details": run.details,
            }
        )
    return rows


def render_history(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No runs recorded yet.\n"
    lines = []
    for r in rows:
        c = r["counts"]
        commit = (r["commit"] or "-------")[:7]
        subject = f" {r['subject']}" if r["subject"] else ""
        lines.append(
            f"{r['id']}  {r['environment']:<12} {r['trigger']:<8} {r['outcome']:<8} "
            f"{commit}{subject}"
        )
        who = ""
        if r["pull_request"] is not None:
            who = f"PR #{r['pull_request']} by {r['author'] or '?'}"
            who += f", approved by {', '.join(r['approvers'])}" if r["approvers"] else ""
        counts = f"+{c['create']} ~{c['update']} -/+{c['replace']} -{c['delete']}" + (
            f" failed {c['failed']}" if c["failed"] else ""
        )
        lines.append(f"    {counts}" + (f"  {who}" if who else ""))
        if r["trigger"] == "rollback" and r["reverted_commits"]:
            undone = ", ".join(s[:7] for s in r["reverted_commits"])
            runs = ", ".join(r["reverted_runs"]) or "no recorded run"
            lines.append(f"    rolls back {undone} (applied by {runs})")
        for flag in ("override_window", "broke_lock"):
            if r["details"].get(flag):
                lines.append(f"    {flag.replace('_', ' ')}")
    return "\n".join(lines) + "\n"
