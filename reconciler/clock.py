"""Time as a collaborator: what code that waits or stamps asks instead of `time` and
`datetime`, so tests run it on a clock they move themselves.

`Clock` has the four things a waiting loop needs: a monotonic reading (deadlines), the
aware UTC time (records), a sleep and a timed wait on a condition. `SystemClock` is
the real one. `FakeClock` only moves when told to (`advance`) or when something sleeps
on it; a timed wait on it either moves it to the wait's end at once (`auto`, the
default: nothing ever waits in real time) or blocks until `advance` reaches that end.

The HTTP client takes the same notions as plain callables (`httpclient.Sleep`, a
`Clock` of seconds): `clock.sleep` is such a `Sleep`, `clock.monotonic` such a reading.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines, waits)."""
        ...

    def now(self) -> datetime:
        """The current time, aware, in UTC (what records say)."""
        ...

    def sleep(self, seconds: float) -> None: ...

    def wait(self, cond: threading.Condition, timeout: float | None) -> bool:
        """`cond.wait(timeout)` on this clock's time: the caller holds `cond`; True when
        notified, False when `timeout` seconds passed first."""
        ...


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def wait(self, cond: threading.Condition, timeout: float | None) -> bool:
        return cond.wait(None if timeout is None else max(0.0, timeout))


SYSTEM_CLOCK = SystemClock()

#: Where a FakeClock's wall time starts unless told otherwise.
FAKE_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


class FakeClock:
    """A clock for tests. Time moves only by `advance` and by sleeping on it; `now()`
    is `epoch` plus the time moved. With `auto`, a timed wait moves the clock to its
    end and returns (a worker waiting for a poll due in an hour polls at once, an hour
    later on this clock); without, it blocks until `advance` gets there or it is
    notified."""

    def __init__(self, *, auto: bool = True, epoch: datetime = FAKE_EPOCH) -> None:
        self.auto = auto
        self.epoch = epoch
        self._elapsed = 0.0
        self._lock = threading.Lock()
        self._waiting: list[threading.Condition] = []  # one entry per blocked wait
        self.slept: list[float] = []  # every sleep and timed wait, in order

    def monotonic(self) -> float:
        with self._lock:
            return self._elapsed

    def now(self) -> datetime:
        return self.epoch + timedelta(seconds=self.monotonic())

    def advance(self, seconds: float) -> None:
        """Move time on and wake every wait that was waiting on this clock."""
        with self._lock:
            self._elapsed += max(0.0, seconds)
            conds = set(self._waiting)
        for cond in conds:
            with cond:
                cond.notify_all()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
        self.advance(seconds)

    def wait(self, cond: threading.Condition, timeout: float | None) -> bool:
        if timeout is None:
            return cond.wait()
        if self.auto:
            self.sleep(timeout)
            return False
        with self._lock:  # registered before `end` is read: no advance goes unseen
            self._waiting.append(cond)
            end = self._elapsed + timeout
        try:
            if self.monotonic() < end:
                cond.wait()  # woken by a notify, or by `advance` (maybe not far enough)
        finally:
            with self._lock:
                self._waiting.remove(cond)
        return self.monotonic() < end
