"""`reconciler status`: what the state records as deployed, per environment."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from reconciler import schedules
from reconciler.state.base import StateStore


def collect_status(
    store: StateStore, environments: Sequence[str] = (), *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """One row per recorded instance; schedules carry their next run times."""
    now = now or datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for env in environments or store.environments():
        for (e, kind, name), rec in sorted(store.applied(env).items()):
            spec = rec.spec
            row: dict[str, Any] = {
                "environment": e,
                "kind": kind,
                "name": name,
                "provider": rec.provider,
                "provider_id": rec.provider_id,
                "model": spec.get("model"),
                "commit": rec.commit,
                "run_id": rec.run_id,
                "applied_at": rec.applied_at.isoformat(),
            }
            if kind == "Schedule":
                try:
                    nxt = schedules.next_fire_times(
                        cron=spec.get("cron"),
                        interval=spec.get("interval"),
                        timezone=spec.get("timezone", "UTC"),
                        now=now,
                        count=1,
                        start_at=_ts(spec.get("startAt")),
                        end_at=_ts(spec.get("endAt")),
                    )
                except ValueError:
                    nxt = []
                row["deployment"] = spec.get("deployment")
                row["next_run"] = nxt[0].isoformat() if nxt else None
                row["next_run_local"] = (
                    schedules.format_both(nxt[0], spec.get("timezone", "UTC")) if nxt else None
                )
                row["enabled"] = spec.get("enabled", True)
            rows.append(row)
    return rows


def _ts(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None


def render_status(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "Nothing recorded yet: run `reconciler apply`.\n"
    lines = []
    current = None
    for r in rows:
        if r["environment"] != current:
            current = r["environment"]
            lines.append(f"{current}:")
        what = r["model"] or r.get("deployment") or ""
        line = (
            f"  {r['kind'].lower()}.{r['name']:<28} {r['provider']:<10} {what:<22} "
            f"{(r['commit'] or '-')[:7]}  {r['applied_at'][:19]}Z"
        )
        if r["kind"] == "Schedule":
            nxt = r.get("next_run_local") or "never"
            line += f"  next: {nxt}" if r.get("enabled", True) else "  (disabled)"
        lines.append(line)
    return "\n".join(lines) + "\n"
