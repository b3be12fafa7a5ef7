"""`reconciler metrics`: requests, success rate, latency percentiles, tokens and cost
per deployment and environment, from the recorded executions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from reconciler.runs.metrics import UsageRow, usage
from reconciler.runs.model import Query
from reconciler.session import Session


@dataclass(frozen=True)
class MetricsReport:
    rows: list[UsageRow]
    since: datetime | None


def metrics(
    session: Session,
    *,
    environments: Sequence[str] = (),
    deployments: Sequence[str] = (),
    since: datetime | None = None,
) -> MetricsReport:
    store = session.open_executions(read_only=True)
    try:
        found = store.find(Query(tuple(environments), tuple(deployments), since=since, limit=None))
    finally:
        store.close()
    return MetricsReport(usage(found), since)
