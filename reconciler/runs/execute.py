"""One execution of one applied deployment: the path `reconciler run` and every fired
schedule take. The provider is asked once; what it answered (or why it failed) is
redacted, capped and recorded, whatever happens."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.log import redact
from reconciler.providers.base import InvokeTarget, Provider
from reconciler.runs.model import DEFAULT_KEEP, DEFAULT_MAX_BYTES, Execution
from reconciler.runs.store import ExecutionStore
from reconciler.state.base import AppliedRecord

Clock = Callable[[], datetime]
#: A call's deadline when the deployment declares no `timeoutSeconds`.
DEFAULT_DEADLINE = 60.0


@dataclass(frozen=True)
class Limits:
    """How much of an input or result is kept, and how many executions per environment."""

    max_bytes: int = DEFAULT_MAX_BYTES
    keep: int = DEFAULT_KEEP


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def cap(text: str, max_bytes: int) -> tuple[str, int, bool]:
    """`text` redacted, then cut to `max_bytes` of UTF-8 (never inside a character):
    (kept, full size in bytes, whether it was cut). Redacting first means a secret cut
    in half at the boundary cannot survive as a fragment."""
    data = redact(text).encode()
    if len(data) <= max_bytes:
        return data.decode(), len(data), False
    return data[:max_bytes].decode(errors="ignore"), len(data), True


def price(spec: Mapping[str, Any]) -> tuple[float, float, str] | None:
    """(per input token, per output token, currency) from the deployment's `pricing`;
    None when it declares none (cost unknown, never 0)."""
    p = spec.get("pricing")
    if not isinstance(p, Mapping):
        return None
    i, o = p.get("inputPerMillionTokens"), p.get("outputPerMillionTokens")
    if not isinstance(i, int | float) or not isinstance(o, int | float):
        return None
    return float(i) / 1e6, float(o) / 1e6, str(p.get("currency") or "USD")


def cost_of(spec: Mapping[str, Any], ex: Execution) -> tuple[float | None, str | None]:
    rates = price(spec)
    if rates is None or ex.input_tokens is None or ex.output_tokens is None:
        return None, None if rates is None else rates[2]
    return round(ex.input_tokens * rates[0] + ex.output_tokens * rates[1], 10), rates[2]


def deadline_of(spec: Mapping[str, Any]) -> float:
    value = spec.get("timeoutSeconds")
    return float(value) if isinstance(value, int | float) and value > 0 else DEFAULT_DEADLINE


def describe_input(data: Mapping[str, Any], limits: Limits) -> str:
    return cap(json.dumps(dict(data), sort_keys=True), limits.max_bytes)[0]


def execute(
    store: ExecutionStore,
    ex: Execution,
    provider: Provider,
    record: AppliedRecord,
    data: Mapping[str, Any],
    *,
    limits: Limits = Limits(),
    clock: Clock = lambda: datetime.now(UTC),
    new: bool = True,
) -> Execution:
    """Run `ex` (new: recorded here as `running`; else moved from `pending`) and record
    how it ended. Returns the execution as recorded: `cancelled` wins over a late answer."""
    ex.status = "running"
    ex.started_at = clock()
    ex.deadline = ex.started_at + timedelta(seconds=deadline_of(record.spec))
    ex.spec_hash, ex.applied_run, ex.commit = record.spec_hash, record.run_id, record.commit
    ex.provider = record.provider
    ex.input = describe_input(data, limits)
    if new:
        if not store.add(ex):
            raise ReconcilerError(f"execution {ex.id} is recorded already")
    elif not store.transition(ex, ("pending",)):
        return store.get(ex.id) or ex
    target = InvokeTarget(record.environment, record.name, record.provider_id, record.spec)
    started = time.monotonic()
    try:
        got = provider.invoke(target, data, deadline_of(record.spec))
    except ReconcilerError as e:
        ex.status = "failed"
        ex.error = cap(e.message, limits.max_bytes)[0]
        ex.latency_ms = round((time.monotonic() - started) * 1000, 3)
    else:
        ex.status = "completed"
        ex.latency_ms = round((got.latency or time.monotonic() - started) * 1000, 3)
        ex.input_tokens = got.usage.input_tokens
        ex.output_tokens = got.usage.output_tokens
        ex.cost, ex.currency = cost_of(record.spec, ex)
        full = as_text(got.output)
        ex.result, ex.result_bytes, ex.truncated = cap(full, limits.max_bytes)
        # judged whole (redacted, never stored): a cut answer could hide what a check
        # looks for past the cut (`executions.maxResultBytes` is not the check's)
        ex.answer = redact(full) if ex.truncated else None
    ex.finished_at = clock()
    if not store.transition(ex, ("running",)):
        return store.get(ex.id) or ex
    if _prune_due(ex.environment):
        store.prune(ex.environment, limits.keep)
    return ex


#: Executions a process records per environment between two prunes: pruning scans the
#: environment's newest `keep`, too much to do after every call of a busy schedule.
PRUNE_EVERY = 50
_recorded: dict[str, int] = {}
_recorded_mu = threading.Lock()


def _prune_due(environment: str) -> bool:
    """True at a process's first execution of `environment` and every PRUNE_EVERY-th:
    what is kept stays within `keep` + PRUNE_EVERY per process recording."""
    with _recorded_mu:
        n = _recorded.get(environment, 0)
        _recorded[environment] = n + 1
    return n % PRUNE_EVERY == 0
