"""An in-memory provider for fast in-process tests of anything that calls providers.

It keeps the contract of `Provider` (idempotent by key, thread-safe) and adds what a
test needs to see and steer: a log of every call, failures injected per key and
action, a scripted health sequence for `status()`, and optional latency. It is not a
plugin (no entry point): hand it to a `ProviderPool` through a factory, e.g.
`RunRequest(..., provider_factory=mem.factory())`.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from reconciler.errors import ProviderError
from reconciler.instances import Instance, InstanceKey, ProviderConfig
from reconciler.providers.base import HealthStatus, LiveObject, Provider
from reconciler.providers.pool import ProviderFactory
from reconciler.redaction import Register, to_backstop
from reconciler.vocabulary import Health

Call = Literal["create", "update", "delete", "read", "status"]

DEFAULT_CONFIG = ProviderConfig(name="memory", type="memory", environment="*")


@dataclass(frozen=True)
class ProviderCall:
    """One call as the provider saw it (bodies are not kept: they may hold secrets)."""

    action: Call
    key: InstanceKey
    provider_id: str | None


@dataclass
class _Fault:
    error: BaseException
    times: int | None  # None: every time


class MemoryProvider(Provider):
    """Objects in a dict keyed by (environment, kind, name)."""

    type_name: ClassVar[str] = "memory"
    #: Polls back to back, nearly: tests steer health with `set_health`, not time.
    poll_interval: ClassVar[float] = 0.001

    def __init__(
        self,
        config: ProviderConfig = DEFAULT_CONFIG,
        *,
        repo_root: Path | None = None,
        env: Mapping[str, str] | None = None,
        latency: float = 0.0,
        register: Register = to_backstop,
    ) -> None:
        super().__init__(config, repo_root=repo_root or Path("."), env=env or {}, register=register)
        #: Seconds each call takes (outside the lock, so calls overlap like real I/O).
        self.latency = latency
        #: How often `close()` was called (the pool closes it after every run).
        self.closes = 0
        self._lock = threading.Lock()
        self._objects: dict[InstanceKey, LiveObject] = {}
        self._calls: list[ProviderCall] = []
        self._faults: dict[tuple[Call, InstanceKey], _Fault] = {}
        self._health: dict[InstanceKey, deque[HealthStatus]] = {}
        self._ids = itertools.count(1)
        self._in_flight = 0
        #: The most calls that were under way at once (how parallel the caller was).
        self.peak_concurrency = 0

    # -- steering and looking (tests) ------------------------------------------------

    def factory(self) -> ProviderFactory:
        """A `ProviderPool` factory that answers every provider name with this one."""
        return lambda _config: self

    def fail(
        self,
        key: InstanceKey,
        action: Call,
        error: BaseException | str = "injected failure",
        *,
        times: int | None = 1,
    ) -> None:
        """Make the next `times` calls of `action` on `key` raise (None: every call).
        A string becomes a ProviderError; any other exception is raised as given."""
        exc = ProviderError(f"provider {self.name!r}: {error}") if isinstance(error, str) else error
        with self._lock:
            self._faults[(action, key)] = _Fault(exc, times)

    def set_health(self, key: InstanceKey, sequence: Iterable[HealthStatus | Health]) -> None:
        """`status()` answers these in turn, then repeats the last one."""
        seq = deque(s if isinstance(s, HealthStatus) else HealthStatus(s) for s in sequence)
        if not seq:
            raise ValueError("a health sequence needs at least one status")
        with self._lock:
            self._health[key] = seq

    def put(self, key: InstanceKey, body: Mapping[str, Any]) -> str:
        """Make an object exist (e.g. one created outside reconciler); returns its id."""
        with self._lock:
            live = self._objects.get(key)
            ident = live.provider_id if live else f"mem-{next(self._ids)}"
            self._objects[key] = LiveObject(ident, copy.deepcopy(dict(body)))
            return ident

    def remove(self, key: InstanceKey) -> None:
        """Make an object vanish behind reconciler's back."""
        with self._lock:
            self._objects.pop(key, None)

    @property
    def objects(self) -> dict[InstanceKey, LiveObject]:
        with self._lock:
            return dict(self._objects)

    @property
    def calls(self) -> list[ProviderCall]:
        with self._lock:
            return list(self._calls)

    def calls_of(self, action: Call) -> list[InstanceKey]:
        return [c.key for c in self.calls if c.action == action]

    # -- plumbing ----------------------------------------------------------------------

    @contextmanager
    def _call(self, action: Call, key: InstanceKey, provider_id: str | None) -> Iterator[None]:
        """Log the call, count it as under way, wait the latency, raise an injected
        fault if one is due; the body does the call's work."""
        with self._lock:
            self._calls.append(ProviderCall(action, key, provider_id))
            self._in_flight += 1
            self.peak_concurrency = max(self.peak_concurrency, self._in_flight)
            fault = self._faults.get((action, key))
            if fault is not None and fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[(action, key)]
        try:
            if self.latency:
                time.sleep(self.latency)
            if fault is not None:
                raise fault.error
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    # -- the contract ------------------------------------------------------------------

    def read(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> LiveObject | None:
        key = InstanceKey(environment, kind, name)
        with self._call("read", key, provider_id), self._lock:
            live = self._objects.get(key)
            return None if live is None else LiveObject(live.provider_id, copy.deepcopy(live.body))

    def status(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> HealthStatus:
        key = InstanceKey(environment, kind, name)
        with self._call("status", key, provider_id), self._lock:
            seq = self._health.get(key)
            if seq:
                return seq.popleft() if len(seq) > 1 else seq[0]
            return HealthStatus("Healthy" if key in self._objects else "Missing")

    def create(self, inst: Instance) -> str:
        with self._call("create", inst.key, None), self._lock:
            live = self._objects.get(inst.key)
            ident = live.provider_id if live else f"mem-{next(self._ids)}"
            self._objects[inst.key] = LiveObject(ident, copy.deepcopy(inst.body()))
            return ident

    def update(self, inst: Instance, provider_id: str) -> None:
        with self._call("update", inst.key, provider_id), self._lock:
            live = self._objects.get(inst.key)
            if live is None:
                raise ProviderError(
                    f"provider {self.name!r}: {inst.key.address} in {inst.environment!r} "
                    "no longer exists"
                )
            self._objects[inst.key] = LiveObject(live.provider_id, copy.deepcopy(inst.body()))

    def delete(self, kind: str, name: str, environment: str, provider_id: str | None) -> None:
        key = InstanceKey(environment, kind, name)
        with self._call("delete", key, provider_id), self._lock:
            self._objects.pop(key, None)

    def close(self) -> None:
        """Counted, not enforced: a test may hand one provider to several runs."""
        with self._lock:
            self.closes += 1
