"""Notifications through apprise: per environment, the targets its Environment names
(`spec.notify`, each the *name* of a RECONCILER_NOTIFY_* variable holding an apprise
URL), told of `applied`, `failed`, `blocked`, `drifted` and `healed`, and of re-checks
(`check_failed`, `check_recovered`: agent/recheck.py), and of eval runs (`eval_failed`,
`eval_recovered`: `reconciler eval`, engine/evaluate.py).

Sending happens on a thread of its own, so a slow or failing target never holds up or
fails a run; each failure is logged (once per target and reason). Every title and body
passes the session's redactor, and the target URLs (which carry tokens) are its secrets
from the moment a notice is queued, so no output or log line can show them.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from reconciler import log
from reconciler.manifests.models import NotifyEvent, NotifyTarget
from reconciler.redaction import Redactor
from reconciler.state.urls import passwords

logger = log.get_logger("reconciler.agent.notify")

#: Seconds `close()` waits for queued notices before it gives up on them.
DRAIN_TIMEOUT_S = 10.0
_QUEUE_SIZE = 1000


@dataclass(frozen=True)
class Notice:
    event: NotifyEvent
    environment: str
    title: str
    body: str


_TYPES = {
    "applied": "success",
    "healed": "success",
    "failed": "failure",
    "blocked": "warning",
    "drifted": "warning",
    "check_failed": "failure",
    "check_recovered": "success",
    "eval_failed": "failure",
    "eval_recovered": "success",
}


class _ToStructlog(logging.Handler):
    """apprise logs through `logging`: its warnings reach our (redacting) log instead."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in a library's log call
            message = str(record.msg)
        logger.warning("notification target", detail=log.redact(message))


def _route_apprise_logs() -> None:
    lg = logging.getLogger("apprise")
    if not any(isinstance(h, _ToStructlog) for h in lg.handlers):
        lg.addHandler(_ToStructlog(logging.WARNING))
    lg.propagate = False


class Notifier:
    """Queues notices and sends them on one background thread; `redactor` (the
    session's) masks what they say and learns the target URLs."""

    def __init__(self, env: Mapping[str, str], redactor: Redactor) -> None:
        self.env = env
        self.redactor = redactor
        self._queue: queue.Queue[tuple[Notice, tuple[str, ...]] | None] = queue.Queue(_QUEUE_SIZE)
        self._said: set[tuple[str, str]] = set()
        self._thread: threading.Thread | None = None
        self._mu = threading.Lock()
        #: Notices handed to apprise, and those it reported as delivered (for /metrics).
        self.sent = 0
        self.failed = 0

    def targets_for(self, event: NotifyEvent, targets: Iterable[NotifyTarget]) -> list[str]:
        """The variable names whose URL hears of `event` (set ones only; each once)."""
        names: dict[str, None] = {}
        for t in targets:
            if event not in t.on:
                continue
            if not self.env.get(t.url_env):
                self._once(t.url_env, "is not set in the agent's environment: not notified")
                continue
            names[t.url_env] = None
        return list(names)

    def send(self, notice: Notice, targets: Sequence[NotifyTarget]) -> None:
        """Queue `notice` for every target that listens for its event; never blocks."""
        names = self.targets_for(notice.event, targets)
        if not names:
            return
        for name in names:
            url = self.env[name]
            self.redactor.add([url, *passwords(url)])
        self._start()
        try:
            self._queue.put_nowait((notice, tuple(names)))
        except queue.Full:
            self._once("queue", "notification queue full: a notice was dropped")

    def _start(self) -> None:
        with self._mu:
            if self._thread is None:
                _route_apprise_logs()
                self._thread = threading.Thread(target=self._work, name="notify", daemon=True)
                self._thread.start()

    def close(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Send what is queued (for at most `timeout` seconds), then stop."""
        with self._mu:
            thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            notice, names = item
            for name in names:
                self._deliver(notice, name)

    def _deliver(self, notice: Notice, name: str) -> None:
        """One notice to one target; any failure is logged, never raised."""
        try:
            import apprise

            sender = apprise.Apprise()
            if not sender.add(self.env[name]):
                self._once(name, "holds no URL apprise understands: not notified")
                self.failed += 1
                return
            ok = bool(
                sender.notify(
                    body=self.redactor.redact(notice.body),
                    title=self.redactor.redact(notice.title),
                    notify_type=_TYPES[notice.event],
                )
            )
        except Exception as e:  # a plugin's bug must not end the sender
            ok = False
            self._once(name, f"failed: {type(e).__name__}: {self.redactor.redact(str(e))}")
        if ok:
            self.sent += 1
        else:
            self.failed += 1
            self._once(name, f"did not take the {notice.event} notice")

    def _once(self, name: str, what: str) -> None:
        key = (name, what)
        if key in self._said:
            return
        self._said.add(key)
        logger.warning("notification", target=name, problem=what)
