"""The dashboard's data: everything a page shows, computed in the background and swapped
in whole, so a request only reads a finished snapshot.

Two cadences. Every `poll` seconds a cheap look at the deploy branch's head and the
state's serials (and newest run): when either moved, or a schedule's listed fire time
passed, the snapshot is rebuilt from state (manifests are loaded once per commit). Every
`interval` the slow parts are redone too: live reads (drift and health, network) and the
verdicts (the forge). A long-running agent drives `refresh()` itself instead of `start()`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from reconciler import log
from reconciler.engine.history import HistoryReport, collect_history
from reconciler.engine.live import LiveReport, ProvidersOfRecord, read_live
from reconciler.engine.overview import (
    OverviewReport,
    Verdicts,
    approval_verdicts,
    collect_overview,
    deploy_ref,
    judge_safely,
)
from reconciler.engine.plan import build_plan
from reconciler.engine.schedules import SchedulesReport, collect_schedules
from reconciler.engine.status import StatusReport, collect_status, fill_health
from reconciler.errors import ReconcilerError
from reconciler.instances import InstanceKey
from reconciler.load import Loaded
from reconciler.plan import Plan
from reconciler.redaction import Redactor
from reconciler.runs.metrics import UsageRow
from reconciler.runs.metrics import usage as collect_usage
from reconciler.runs.model import Execution, Query
from reconciler.session import Session
from reconciler.state.base import AppliedRecord, RunRecord, StateStore
from reconciler.views import drift as drift_view
from reconciler.views import history as history_view
from reconciler.views import overview as overview_view
from reconciler.views import plan as plan_view
from reconciler.views import run as run_view
from reconciler.views import schedules as schedules_view
from reconciler.views import status as status_view

Clock = Callable[[], datetime]
#: What a history API call returns without `limit` (the CLI's default).
HISTORY_DEFAULT = 50
#: Executions a snapshot holds (the executions page and /api/executions).
EXECUTIONS_LIMIT = 500
#: What the metrics page aggregates: the last day's executions.
USAGE_WINDOW = timedelta(days=1)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Snapshot:
    """One consistent view of the deploy branch head and the recorded state."""

    ref: str | None
    commit: str | None
    built_at: datetime
    plan: Plan
    overview: OverviewReport
    schedules: SchedulesReport
    status: StatusReport
    #: The newest runs of every environment (at most `history_limit`).
    history: HistoryReport
    #: True when older runs exist than `history` holds.
    history_truncated: bool
    live: LiveReport | None
    #: The JSON documents of /api/*, rendered once and redacted.
    documents: dict[str, str] = field(default_factory=dict)
    #: The newest executions (at most EXECUTIONS_LIMIT) and usage over the last day.
    executions: list[Execution] = field(default_factory=list)
    usage: list[UsageRow] = field(default_factory=list)

    def run(self, run_id: str) -> RunRecord | None:
        return next((r.run for r in self.history.rows if r.run.id == run_id), None)

    def rolled_back_by(self, run_id: str) -> list[RunRecord]:
        """Later runs that recorded undoing `run_id`."""
        return [r.run for r in self.history.rows if run_id in r.run.reverted_runs]


@dataclass(frozen=True)
class _Fingerprint:
    commit: str | None
    serials: tuple[tuple[str, int], ...]
    newest_run: tuple[str, str] | None


class Refresher:
    """Builds snapshots; `snapshot` is always the last good one (or None at first)."""

    def __init__(
        self,
        session: Session,
        *,
        ref: str | None = None,
        interval: float = 60.0,
        poll: float = 2.0,
        live: bool = True,
        verdicts: Verdicts | None = None,
        history_limit: int = 1000,
        clock: Clock = _utcnow,
    ) -> None:
        self.session = session
        self.settings = session.settings
        self.ref = ref
        self.interval = timedelta(seconds=interval)
        self.poll = poll
        self.live_enabled = live
        self.verdicts = verdicts or approval_verdicts(session)
        self.history_limit = history_limit
        self.clock = clock
        self.snapshot: Snapshot | None = None
        #: The last refresh's failure (None when it succeeded), shown on every page.
        self.error: str | None = None
        self.error_at: datetime | None = None
        self._loaded: Loaded | None = None
        self._of_record = ProvidersOfRecord(session)
        self._fingerprint: _Fingerprint | None = None
        self._slow_at: datetime | None = None
        self._verdicts: tuple[datetime, dict[str, list[str]]] | None = None
        self._problems: list[str] = []
        #: The recorded schedules of the last build (fire times are redone from them).
        self._schedules: dict[str, dict[InstanceKey, AppliedRecord]] = {}
        #: (id, status) of the newest executions last read: read again when it moves.
        self._executions_seen: list[tuple[str, str]] | None = None
        self._mu = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- driving ---------------------------------------------------------------------

    def start(self) -> None:
        """Refresh every `poll` seconds in a daemon thread until `stop()`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="dashboard-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)  # a refresh mid-way is a daemon: it dies with us
            self._thread = None

    def _loop(self) -> None:
        while True:
            self.refresh_safely()
            if self._stop.wait(self.poll):
                return

    def refresh_safely(self) -> Snapshot | None:
        """`refresh()`, keeping the last good snapshot when it fails (the error is kept
        for the pages to show)."""
        try:
            return self.refresh()
        except ReconcilerError as e:
            self._failed(e.message + (f"\n{e.details}" if e.details else ""))
        except Exception as e:  # a background thread must never die of one bad refresh
            self._failed(f"internal error: {type(e).__name__}: {e}")
            log.get_logger("reconciler.dashboard").exception("refresh failed")
        return self.snapshot

    def _failed(self, message: str) -> None:
        message = self.session.redactor.redact(message)
        if message != self.error:  # said once, not at every poll
            log.get_logger("reconciler.dashboard").warning("refresh failed", error=message)
        self.error = message
        self.error_at = self.clock()

    # -- one refresh -----------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> Snapshot:
        """Rebuild the snapshot if anything moved (or `force`); return the current one."""
        with self._mu:
            self._problems = []
            snap = self._refresh(force)
            if self._problems:
                self._failed("; ".join(self._problems))
            else:
                self.error = self.error_at = None
        return snap

    def _refresh(self, force: bool) -> Snapshot:
        now = self.clock()
        ref = deploy_ref(self.session, self.ref)
        repo = self.session.repo
        commit = repo.resolve(ref) if ref is not None else repo.head()
        with self.session.open_store(read_only=True) as store:
            newest = store.runs(None, limit=1)
            fp = _Fingerprint(
                commit,
                tuple(sorted(store.serials().items())),
                (newest[0].id, newest[0].outcome) if newest else None,
            )
            slow = force or self._slow_at is None or now - self._slow_at >= self.interval
            moved = fp != self._fingerprint
            stale = self._schedules_stale(now)
            if self.snapshot is not None and not (slow or moved):
                if stale:  # only time passed: the fire times, not the whole snapshot
                    self.snapshot = self._reschedule(self.snapshot, now)
                self.snapshot = self._with_executions(self.snapshot, now)
                return self.snapshot
            loaded = self._load(ref, commit)
            snap = self._build(store, loaded, ref, now, slow=slow or moved)
        self._executions_seen = None
        snap = self._with_executions(snap, now)
        self._fingerprint = fp
        if slow or moved:
            self._slow_at = now
        self.snapshot = snap
        return snap

    def _with_executions(self, snap: Snapshot, now: datetime) -> Snapshot:
        """The snapshot with the newest executions, read again only when one was recorded
        or ended since (executions move no state serial: a fire is not a run)."""
        with closing(self.session.open_executions(read_only=True)) as store:
            recent = store.find(Query(limit=EXECUTIONS_LIMIT))
            newest: list[tuple[str, str]] = [(e.id, e.status) for e in recent]
            if newest == self._executions_seen and snap.documents.get("executions"):
                return snap
            self._executions_seen = newest
            usage = collect_usage(store.find(Query(since=now - USAGE_WINDOW, limit=None)))
        redact = self.session.redactor.redact
        docs = {
            **snap.documents,
            "executions": redact(run_view.list_json(recent)),
            "metrics": redact(json.dumps([r.document() for r in usage], indent=2,
                                         sort_keys=True) + "\n"),
        }  # fmt: skip
        return replace(snap, executions=recent, usage=usage, documents=docs)

    def _reschedule(self, snap: Snapshot, now: datetime) -> Snapshot:
        fresh = collect_schedules(self._schedules, now=now)
        text = self.session.redactor.redact(schedules_view.json(fresh))
        return replace(snap, schedules=fresh, documents={**snap.documents, "schedules": text})

    def _schedules_stale(self, now: datetime) -> bool:
        until = self.snapshot.schedules.valid_until if self.snapshot else None
        return until is not None and now >= until

    def _load(self, ref: str | None, commit: str | None) -> Loaded:
        """The manifests at `commit`, loaded once per commit (a working tree: always)."""
        cached = self._loaded
        if cached is None or commit is None or cached.commit != commit or cached.dirty:
            cached = self.session.load(ref)
            self._loaded = cached
        return cached

    def _build(
        self, store: StateStore, loaded: Loaded, ref: str | None, now: datetime, *, slow: bool
    ) -> Snapshot:
        plan = build_plan(self.session, store, ref=ref, loaded=loaded, now=now).plan
        envs = list(dict.fromkeys([*loaded.desired.environments, *store.environments()]))
        applied = {env: store.applied(env) for env in envs}
        self._schedules = {
            env: {k: r for k, r in applied[env].items() if k.kind == "Schedule"}
            for env in store.environments()
        }
        live = self.snapshot.live if self.snapshot else None
        if slow:
            live = self._read_live(store, loaded, now) or live
            self._verdicts = (now, judge_safely(self.verdicts, plan))
        verdicts_at, verdicts = self._verdicts or (None, None)
        repo = self.session.repo
        executions = self.session.open_executions(read_only=True)  # promotion evidence
        try:
            overview = collect_overview(
                loaded.desired,
                plan,
                store,
                repo,
                live=live,
                verdicts=verdicts,
                verdicts_at=verdicts_at,
                now=now,
                applied=applied,
                executions=executions,
            )
        finally:
            executions.close()
        history = collect_history(store, repo, limit=self.history_limit)
        snap = Snapshot(
            ref=ref,
            commit=loaded.commit,
            built_at=now,
            plan=plan,
            overview=overview,
            schedules=collect_schedules(self._schedules, now=now),
            status=self._status(store, live, now),
            history=history,
            history_truncated=len(history.rows) >= self.history_limit,
            live=live,
        )
        snap.documents.update(_documents(snap, self.session.redactor))
        return snap

    @staticmethod
    def _status(store: StateStore, live: LiveReport | None, now: datetime) -> StatusReport:
        """What `status` prints: the records, with health from the last live reading."""
        status = collect_status(store, now=now)
        if live is not None:
            fill_health(status, live.health, live.unreadable)
        return status

    def _read_live(self, store: StateStore, loaded: Loaded, now: datetime) -> LiveReport | None:
        if not self.live_enabled:
            return None
        try:
            return read_live(self.session, store, self._of_record.get(store, loaded), now=now)
        except ReconcilerError as e:
            self._problems.append(f"reading live state failed: {e.message}")
            return None


def _documents(snap: Snapshot, redactor: Redactor) -> dict[str, str]:
    docs = {
        "overview": overview_view.json(snap.overview),
        "schedules": schedules_view.json(snap.schedules),
        "status": status_view.json(snap.status),
        "plan": plan_view.json(snap.plan),
        "history": history_view.json(HistoryReport(snap.history.rows[:HISTORY_DEFAULT])),
    }
    if snap.live is not None:
        docs["drift"] = drift_view.json(snap.live.drift, redactor)
    return {name: redactor.redact(text) for name, text in docs.items()}
