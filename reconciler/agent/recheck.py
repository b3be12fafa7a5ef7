"""The re-check thread beside the agent's loop (as the firing thread is): it runs each
applied deployment's checks at their `interval` (`checks.recheck`), tells the policy of
record's notification targets when a check starts failing (`check_failed`, each failed
expectation with its measured value and bound) and when it passes again
(`check_recovered`), and counts outcomes on /metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from reconciler.agent.notify import Notice, Notifier
from reconciler.agent.policy import notify_targets
from reconciler.checks.recheck import Recheck, RecheckEngine
from reconciler.log import get_logger, redact
from reconciler.manifests import Desired
from reconciler.runs.execute import Limits
from reconciler.runs.fire import utc_now
from reconciler.runs.firer import open_until_stopped
from reconciler.runs.prom import CheckMetrics
from reconciler.session import Session
from reconciler.state import open_state
from reconciler.state.base import StateStore

log = get_logger("reconciler.checks")


def notice_for(done: Recheck) -> Notice | None:
    """What to tell of a re-check: that the check started failing (it passed before, or
    never ran since the deployment was applied), or that it passes again; None when its
    outcome did not change."""
    where = f"deployment.{done.deployment} in {done.environment}"
    if not done.passed and done.previous_passed is not False:
        lines = [
            f"Check {done.check} failed on {where} "
            f"(digest {done.digest.removeprefix('sha256:')[:12]}, due {done.due.isoformat()}).",
            *(f"- {line}" for line in done.failures),
            f"It is not eligible for promotion from {done.environment} until it is "
            "applied there again.",
        ]
        title = f"{done.environment}: check {done.check} failed on deployment.{done.deployment}"
        return Notice("check_failed", done.environment, title, "\n".join(lines))
    if done.passed and done.previous_passed is False:
        title = f"{done.environment}: check {done.check} passes again on {done.deployment}"
        body = (
            f"Check {done.check} passed on {where} (due {done.due.isoformat()}) after a "
            "failure. The failure still counts against promotion until it is applied again."
        )
        return Notice("check_recovered", done.environment, title, body)
    return None


class Rechecker:
    def __init__(
        self,
        session: Session,
        notifier: Notifier,
        *,
        environments: tuple[str, ...] = (),
        clock: Callable[[], datetime] = utc_now,
        wake: float = 1.0,
        metrics: CheckMetrics | None = None,
    ) -> None:
        self.session = session
        self.notifier = notifier
        self.environments = environments
        self.clock = clock
        self.wake = wake
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recheck", daemon=True)
        self._state: StateStore | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60) -> None:
        """Start no other re-check; wait for the one under way to be recorded."""
        self._stop.set()
        self._thread.join(timeout)

    def _load(self, commit: str) -> Desired:
        return self.session.load(commit).desired  # registers its secrets for redaction

    def _run(self) -> None:
        s = self.session.settings
        executions = open_until_stopped(self.session, self._stop, "check.cannot_start")
        if executions is None:
            return
        engine = RecheckEngine(
            s,
            executions,
            self._load,
            environments=self.environments,
            limits=Limits(s.executions.max_result_bytes, s.executions.keep),
            clock=self.clock,
            make=self.session.provider,  # what providers find, the session's redactor learns
        )
        try:
            while not self._stop.is_set():
                try:
                    self._tick(engine, self.clock())
                except Exception as e:  # a bug or the database gone must not end it
                    log.exception("check.recheck_error", error=redact(str(e)))
                    self._close_state()
                self._stop.wait(self._sleep_for(engine, self.clock()))
        finally:
            self._close_state()
            engine.close()
            executions.close()

    def _tick(self, engine: RecheckEngine, now: datetime) -> None:
        s = self.session.settings
        if self._state is None or not self._state.environments():
            # a read-only SQLite store opened before the file existed never sees it
            self._close_state()
            self._state = open_state(s.state_url, repo_root=s.repo, env=s.env, read_only=True)
        for done in engine.tick(self._state, now):
            if self._stop.is_set():
                return
            self._tell(self._state, done)

    def _tell(self, state: StateStore, done: Recheck) -> None:
        if self.metrics is not None:
            self.metrics.observe_check(done)
        notice = notice_for(done)
        if notice is not None:
            self.notifier.send(notice, notify_targets(state, None, done.environment))

    def _close_state(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None

    def _sleep_for(self, engine: RecheckEngine, now: datetime) -> float:
        due = engine.next_due()
        if due is None:
            return self.wake
        return max(0.0, min(self.wake, (due - now).total_seconds()))
