"""The words every stage shares, each defined once: risk levels and their order,
change actions, outcomes and run triggers.

Dependency-free on purpose: the pure approval rules, the planner, the executor, the
state and the views all import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

#: How risky a change is; the order below is the order of severity.
Risk = Literal["low", "medium", "high", "critical"]
RISKS: tuple[Risk, ...] = ("low", "medium", "high", "critical")
_RISK_RANK: dict[str, int] = {r: i for i, r in enumerate(RISKS)}


def risk_rank(risk: str) -> int:
    """Severity of `risk` (unknown text ranks as the most severe: fail closed)."""
    return _RISK_RANK.get(risk, len(RISKS) - 1)


def as_risk(value: object) -> Risk:
    """A recorded or planned risk as a `Risk`; anything unknown is `critical`."""
    for risk in RISKS:
        if value == risk:
            return risk
    return "critical"


def highest_risk(risks: Iterable[str]) -> Risk:
    """The most severe of `risks` (`low` when there are none)."""
    return max((as_risk(r) for r in risks), key=risk_rank, default="low")


#: What a plan does to one instance.
Action = Literal["create", "update", "replace", "delete"]
ACTIONS: tuple[Action, ...] = ("create", "update", "replace", "delete")

#: What became of one change in a run.
ChangeOutcome = Literal["applied", "failed", "skipped"]

#: A recorded run's outcome: `running` until it finishes; `interrupted` when its
#: process died (found by the next run that takes the lock).
RunOutcome = Literal["running", "applied", "failed", "interrupted"]

#: What an environment came to in one command: a run's outcome, or no run at all
#: (`blocked` by its gate, `noop` with nothing to change).
EnvironmentOutcome = Literal["applied", "failed", "blocked", "noop"]

#: Why a run happened: `apply` (the CLI), `agent` (`reconciler agent` applied a commit of
#: the deploy branch), `rollback` (the commit is an exact revert), `heal` (drift put back).
Trigger = Literal["apply", "agent", "rollback", "heal"]

#: How a live object is doing, in Argo CD's words. `Healthy` is the only state a
#: change waits for; `Degraded` is a failure; `Suspended` (paused, scaled to zero) is
#: intended, not a failure; `Missing` means the provider has no such object.
Health = Literal["Healthy", "Progressing", "Degraded", "Suspended", "Missing"]
HEALTHS: tuple[Health, ...] = ("Healthy", "Suspended", "Progressing", "Missing", "Degraded")
#: What ends a wait for a change just written: Healthy, or Suspended on purpose.
READY: frozenset[Health] = frozenset({"Healthy", "Suspended"})
_HEALTH_RANK: dict[str, int] = {h: i for i, h in enumerate(HEALTHS)}


def health_is_worse(a: Health, b: Health) -> bool:
    """True when `a` is a worse state than `b` (for summarising many instances)."""
    return _HEALTH_RANK[a] > _HEALTH_RANK[b]
