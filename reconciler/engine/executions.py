"""`reconciler executions`: recorded executions, newest first, filtered like a log
viewer; `executions show ID` one of them whole."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from reconciler.errors import ConfigError, ReconcilerError
from reconciler.runs.model import STATUSES, Execution, Query
from reconciler.runs.store import reap
from reconciler.schedules import parse_duration
from reconciler.session import Session


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """`--since`: a duration back from now (`30m`, `6h`, `2d`) or an ISO 8601 time
    (a time without a zone is UTC)."""
    if text is None:
        return None
    if re.fullmatch(r"\s*[\d.]+\s*[dhms].*", text):
        try:
            return (now or datetime.now(UTC)) - parse_duration(text)
        except ValueError as e:
            raise ConfigError(f"--since: {e}") from None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither a duration (30m, 6h, 2d) nor an ISO 8601 time"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def check_statuses(statuses: Sequence[str]) -> tuple[str, ...]:
    for s in statuses:
        if s not in STATUSES:
            raise ConfigError(f"unknown status {s!r}: use one of {', '.join(STATUSES)}")
    return tuple(statuses)


def list_executions(
    session: Session,
    *,
    environments: Sequence[str] = (),
    deployments: Sequence[str] = (),
    statuses: Sequence[str] = (),
    since: datetime | None = None,
    limit: int = 100,
) -> list[Execution]:
    query = Query(
        tuple(environments), tuple(deployments), check_statuses(statuses), since=since, limit=limit
    )
    store = session.open_executions()
    try:
        reap(store)  # an execution whose process died is said so, not left `running`
        return store.find(query)
    finally:
        store.close()


def show_execution(session: Session, execution_id: str) -> Execution:
    store = session.open_executions()
    try:
        reap(store)
        ex = store.get(execution_id)
    finally:
        store.close()
    if ex is None:
        raise ReconcilerError(f"no execution {execution_id!r} is recorded")
    return ex
