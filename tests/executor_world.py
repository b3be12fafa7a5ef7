"""What the in-process executor tests share (test_executor.py, test_executor_health.py):
one environment on an in-memory provider, planned by the real planner against a real
SQLite state file, and applied by the real executor on a `FakeClock` (every wait for
health, every deadline and every timestamp on it: nothing waits in real time) unless a
test passes `clock` (the system clock, where real threads and signals are the point)."""

from __future__ import annotations

from typing import Any

from reconciler.clock import FakeClock
from reconciler.executor import EnvironmentResult, RunContext, RunRequest, execute_environment
from reconciler.instances import Instance, InstanceKey, ProviderConfig
from reconciler.plan import EnvironmentPlan, plan_environment
from reconciler.providers.testing import MemoryProvider
from reconciler.state.sqlite import SQLiteState

ENV = "dev"
PROVIDERS = {"mem": ProviderConfig(name="mem", type="memory", environment=ENV)}
#: The same environment as manifests, on the `local` provider (`registry`), for tests
#: that go through loading and planning too.
REPO_ENV = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: dev}
spec: {description: test}
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: registry}
spec:
  type: local
  environments: [dev]
"""


def desired_of(*insts: Instance) -> dict[InstanceKey, Instance]:
    return {i.key: i for i in insts}


def plan_of(store: SQLiteState, desired: dict[InstanceKey, Instance]) -> EnvironmentPlan:
    """What the real planner makes of `desired` against what the state recorded."""
    return plan_environment(
        ENV,
        desired,
        store.applied(ENV),
        serial=store.serial(ENV),
        protected=False,
        allow_delete=True,
        immutable={},
        secret_env={},
        fingerprint_key=b"",
    )


def apply(
    store: SQLiteState,
    mem: MemoryProvider,
    desired: dict[InstanceKey, Instance],
    plan: EnvironmentPlan | None = None,
    **kwargs: Any,
) -> EnvironmentResult:
    kwargs.setdefault("clock", FakeClock())
    kwargs.setdefault("context", RunContext(commit="c0ffee"))
    request = RunRequest(
        desired=desired, providers=PROVIDERS, provider_factory=mem.factory(), **kwargs
    )
    return execute_environment(store, plan or plan_of(store, desired), request)


def outcomes(result: EnvironmentResult) -> dict[str, str]:
    return {r.change.address: r.outcome for r in result.results}
