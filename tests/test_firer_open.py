"""The agent's firing and re-check threads open the executions again while the state is
unreachable, instead of ending for the agent's life: an agent started during a database
outage fires once the database is back."""

from __future__ import annotations

import threading
from typing import Any

from reconciler.errors import StateError
from reconciler.runs import firer


class Outage:
    """A session whose state answers only from the `down`-th attempt on; each failed
    attempt is counted, and the test's stop event is set when asked."""

    def __init__(self, down: int, stop: threading.Event | None = None) -> None:
        self.down, self.attempts, self.stop = down, 0, stop

    def open_executions(self) -> Any:
        self.attempts += 1
        if self.attempts <= self.down:
            if self.stop is not None and self.attempts == self.down:
                self.stop.set()
            raise StateError("cannot open state postgresql://db: connection refused")
        return "the executions"


def test_the_executions_are_opened_again_until_the_state_answers() -> None:
    session = Outage(down=3)
    got = firer.open_until_stopped(session, threading.Event(), "fire.cannot_start", every=0)  # type: ignore[arg-type]
    assert got == "the executions" and session.attempts == 4


def test_stopping_ends_the_attempts() -> None:
    stop = threading.Event()
    session = Outage(down=2, stop=stop)  # the agent stops during the second attempt
    got = firer.open_until_stopped(session, stop, "fire.cannot_start", every=0)  # type: ignore[arg-type]
    assert got is None and session.attempts == 2
