"""`reconciler plan`: what apply would change, per environment. Never writes state."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.commands.context import open_store, secret_env
from reconciler.config import Settings
from reconciler.errors import ReconcilerError
from reconciler.load import Loaded, load
from reconciler.plan import Plan, make_plan
from reconciler.state.base import StateStore


@dataclass(frozen=True)
class PlanOptions:
    environments: Sequence[str] = ()
    ref: str | None = None
    allow_delete: bool = False


def build_plan(
    settings: Settings,
    store: StateStore,
    *,
    ref: str | None = None,
    environments: Sequence[str] = (),
    allow_delete: bool = False,
) -> tuple[Loaded, Plan]:
    """Load the manifests at `ref` (or the working tree) and plan them against `store`."""
    loaded = load(settings, ref)
    plan = make_plan(
        loaded.desired,
        store,
        commit=loaded.commit,
        dirty=loaded.dirty,
        ref=ref,
        environments=environments or None,
        allow_delete=allow_delete,
        secret_env=secret_env(settings, loaded.desired),
    )
    return loaded, plan


def plan(settings: Settings, opts: PlanOptions) -> Plan:
    with open_store(settings, read_only=True) as store:
        _, p = build_plan(
            settings,
            store,
            ref=opts.ref,
            environments=opts.environments,
            allow_delete=opts.allow_delete,
        )
    return p


def load_plan_file(path: Path) -> Plan:
    """A plan saved by `plan --out`, or a clear error."""
    try:
        return Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ReconcilerError(f"plan file {path} does not exist") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ReconcilerError(f"plan file {path} is not a reconciler plan: {e}") from None
