"""Which environments this agent works, among several on one PostgreSQL state, and
whether the state answers.

- `Shard`: a static selector (`--shard NAME` for `sync.shard: NAME`, or
  `--shard key=value[,key=value]` for the Environment's labels). An agent reads,
  plans, applies and watches only its shard's environments, so it needs only their
  credentials. `sync.shard` is part of the environment's policy, so moving an
  environment to another shard is judged as a policy change; labels are not (prefer
  `sync.shard` where that matters).
- `Coordinator`: dynamic assignment (opt-in): this agent's membership row beaten every
  heartbeat, work keys given out by rendezvous hashing over the live members, and the
  singleton duties held by one member with the others on standby. While it cannot
  beat (the state is unreachable) it owns nothing: it starts no work it might share.
- `StateProbe`: is the state reachable, asked on a thread of its own (a server that
  does not answer never holds up the loop); what /readyz reports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from reconciler.errors import ConfigError, ReconcilerError
from reconciler.log import get_logger, redact
from reconciler.manifests import Desired
from reconciler.session import Session
from reconciler.state.members import Membership, owned, ping

log = get_logger("reconciler.agent")

#: The duty the first singleton holder does: forget members long gone.
PRUNE_DUTY = "prune-members"


@dataclass(frozen=True)
class Shard:
    """`NAME` (the environments whose `sync.shard` is NAME) or `key=value,...` (whose
    labels hold every pair)."""

    name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Shard:
        text = text.strip()
        if not text:
            raise ConfigError("--shard: empty selector (NAME, or label=value[,label=value])")
        if "=" not in text:
            return cls(name=text)
        pairs = []
        for part in text.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"--shard {text!r}: {part!r} is not label=value")
            pairs.append((key.strip(), value.strip()))
        return cls(labels=tuple(pairs))

    def selects(self, desired: Desired, env: str) -> bool:
        if self.name is not None:
            sync = desired.policy(env).sync
            return sync is not None and sync.shard == self.name
        labels = desired.manifests.environments[env].model.metadata.labels
        return all(labels.get(k) == v for k, v in self.labels)

    def __str__(self) -> str:
        return self.name or ",".join(f"{k}={v}" for k, v in self.labels)


def work_key(desired: Desired, env: str, by: str) -> str:
    """What assignment hashes: the environment, or the provider accounts it writes to
    (type, host and credential variables), so environments sharing an account whose
    vendor serialises writes are worked by one agent."""
    if by == "environment":
        return f"env\0{env}"
    accounts = sorted(
        "|".join([p.type, str(p.config.get("baseUrl") or ""), *sorted(p.credentials.values())])
        for p in desired.providers.get(env, {}).values()
    )
    return "accounts\0" + "\0".join(accounts) if accounts else f"env\0{env}"


class Coordinator:
    """This agent among the live members: beats, ownership, singleton duties."""

    def __init__(
        self,
        url: str,
        *,
        heartbeat: float,
        on_change: Callable[[], None],
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.heartbeat = heartbeat
        #: A member missing 3 beats (with its session still open: a hung process) is dead.
        self.membership = Membership(url, name=name, ttl=3 * heartbeat)
        self.on_change = on_change
        self.clock = clock
        self.members: tuple[str, ...] = ()
        self.healthy = False
        self.duties: set[str] = set()
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="members", daemon=True)

    @property
    def name(self) -> str:
        return self.membership.name

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.membership.leave()

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self.beat()

    def beat(self) -> None:
        try:
            members = tuple(self.membership.beat())
            if self.membership.hold(PRUNE_DUTY):
                if PRUNE_DUTY not in self.duties:
                    log.info("holding a singleton duty", duty=PRUNE_DUTY, member=self.name)
                self.duties = {PRUNE_DUTY}
                self.membership.prune(older_than=10 * self.membership.ttl)
            else:
                self.duties = set()
        except ReconcilerError as e:
            if self.healthy or self.error != e.message:
                log.warning("cannot beat: working no environment meanwhile", error=e.message)
            self.healthy, self.error, self.duties = False, e.message, set()
            self.on_change()
            return
        changed = members != self.members or not self.healthy
        self.members, self.healthy, self.error = members, True, None
        if changed:
            log.info("members", members=list(members), me=self.name)
            self.on_change()

    def owns(self, keys: Mapping[str, str]) -> set[str]:
        """Of `keys` (environment → work key), those this agent works now."""
        if not self.healthy:
            return set()
        return owned(keys, self.name, self.members)

    def holds(self, duty: str) -> bool:
        return duty in self.duties


class StateProbe:
    """Asks the state every `period` seconds whether it answers."""

    def __init__(
        self,
        session: Session,
        *,
        period: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.session = session
        self.period = period
        self.clock = clock
        self.on_change = on_change
        self.ok: bool | None = None
        self.error: str | None = None
        self.checked: float | None = None
        self.checked_at: datetime | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            self.probe()
            if self._stop.wait(self.period):
                return

    def probe(self) -> None:
        error: str | None = None
        try:
            url = self.session.settings.state_url
            if url.startswith(("postgresql://", "postgres://")):
                ping(url, timeout=max(1, int(self.period)))
            else:
                with self.session.open_store(read_only=True) as store:
                    store.serials()
        except ReconcilerError as e:
            error = e.message
        except Exception as e:  # whatever else: reported, never raised on this thread
            error = redact(f"{type(e).__name__}: {e}")
        was = self.ok
        self.ok, self.error = error is None, error
        self.checked, self.checked_at = self.clock(), datetime.now(UTC)
        if was is not None and was != self.ok:
            if self.ok:
                log.info("the state answers again")
            else:
                log.error("the state does not answer", error=error)
        if was != self.ok and self.on_change is not None:
            self.on_change()
