"""What the agent does per environment (`spec.sync`) and whom it tells (`spec.notify`).

`sync` is read from the fetched commit of the deploy branch: it only decides whether
the agent *tries*; whether a change may reach the environment is the gate's verdict,
judged exactly as for `apply`. Notification targets are the union of the policy of
record's (the last applied run's) and the fetched commit's: a change can add a target
(one of the RECONCILER_NOTIFY_* variables the operator set), never silence one that is
in force, not even while it is the change being reported as blocked. Both fields are
part of the environment's policy, so changing them is judged as a policy change.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.errors import ReconcilerError
from reconciler.manifests import Desired
from reconciler.manifests.models import NotifyTarget
from reconciler.policy import Policy
from reconciler.schedules import parse_duration
from reconciler.state.base import StateStore


@dataclass(frozen=True)
class Sync:
    environment: str
    auto: bool
    #: Seconds between fetch-plan-apply passes.
    interval: float
    self_heal: bool
    #: Seconds between drift checks.
    drift_interval: float


def sync_policies(desired: Desired) -> dict[str, Sync]:
    """The environments that have a `sync` block, in declaration order."""
    out: dict[str, Sync] = {}
    for env in desired.environments:
        sync = desired.policy(env).sync
        if sync is None:
            continue
        interval = parse_duration(sync.interval).total_seconds()
        drift = sync.drift_interval
        out[env] = Sync(
            environment=env,
            auto=sync.auto,
            interval=interval,
            self_heal=sync.self_heal,
            drift_interval=parse_duration(drift).total_seconds() if drift else interval,
        )
    return out


def notify_targets(store: StateStore, desired: Desired | None, env: str) -> list[NotifyTarget]:
    """The recorded policy's targets, then the fetched commit's (each variable once)."""
    found: list[NotifyTarget] = []
    try:
        last = store.last_applied_run(env)
        if last is not None and last.policy is not None:
            found += Policy.from_document(last.policy, f"run {last.id}").spec.notify
    except ReconcilerError:
        pass  # unreadable record: the commit's targets still hear of it
    if desired is not None and env in desired.environments:
        found += desired.policy(env).notify
    merged: dict[str, NotifyTarget] = {}
    for t in found:
        if t.url_env in merged:
            events = list(dict.fromkeys([*merged[t.url_env].on, *t.on]))
            merged[t.url_env] = NotifyTarget(url_env=t.url_env, on=events)
        else:
            merged[t.url_env] = t
    return list(merged.values())
