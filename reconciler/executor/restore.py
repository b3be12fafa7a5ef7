"""Putting back what a failed run wrote (`--rollback-on-failure`, or checks that ask).

Each written change gets an inverse change, newest first: what the run created is
deleted; anything else gets its recorded spec back (re-created where the run deleted or
replaced it). An inverse change is a `Write` like any other: the same provider call
(`call_provider`, under the lock check and a slot), recorded the moment it is written
(the state must say what the provider holds even if the object then never comes up),
then waited for until Healthy by the same `Waits`, on the run's clock. Restores run one
at a time, each to its end; a failure is that restore's outcome and the others go on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconciler.instances import Instance, InstanceKey
from reconciler.plan import Change
from reconciler.state.base import AppliedRecord
from reconciler.vocabulary import Action

from .change import Executor
from .model import ChangeResult, LockLost, error_text, instance_from_record
from .record import Live, Write, record_applied
from .wait import Waiting


def inverse(
    res: ChangeResult, old: AppliedRecord | None, desired: Mapping[InstanceKey, Instance]
) -> Write:
    """The write that undoes `res`, given what was recorded before the run (`old`)."""
    ch = res.change
    if old is None:  # it was created: remove it
        inst = desired.get(ch.key)
        provider = inst.provider if inst else ch.provider
        gone = Change("delete", ch.key, provider, None, None)
        return Write(gone, "delete", None, Live(provider, res.provider_id), restoring=True)
    back = instance_from_record(old)
    call: Action = "update"
    live: Live | None = Live(old.provider, old.provider_id)
    if ch.action == "replace" and res.provider_id:  # remove what replaced it, re-create
        call, live = "replace", Live(ch.provider, res.provider_id)
    elif ch.action in ("delete", "replace"):
        call, live = "create", None
    put_back = Change("update", ch.key, old.provider, None, back.body())
    return Write(put_back, call, back, live, before=old, restoring=True)


def restore(
    ex: Executor,
    results: Sequence[ChangeResult],
    before: Mapping[InstanceKey, AppliedRecord],
    run_id: str,
) -> list[ChangeResult]:
    """Put back the recorded specs of what this run wrote (newest first), each
    waited for until Healthy like any change. Every failure is the restore's
    outcome for that change; the others still go on."""
    restored: list[ChangeResult] = []
    for res in reversed([r for r in results if r.written]):
        try:
            error = _restore_one(ex, inverse(res, before.get(res.change.key), ex.desired), run_id)
        except Exception as e:
            error = error_text(e)
        restored.append(
            ChangeResult(res.change, "applied" if error is None else "failed", error=error)
        )
    return restored


def _restore_one(ex: Executor, w: Write, run_id: str) -> str | None:
    """Make and record one inverse change, then wait for it: None when it holds, else
    why not. Ctrl-C interrupts the wait."""
    try:
        provider_id = ex.write(w)
    except LockLost as lost:  # no write without the lock: this restore's outcome
        return error_text(lost.error)
    record_applied(ex.store, w, run_id, None, provider_id, ex.clock.now())
    waiting = ex.waits.start(w, provider_id)
    if waiting is None:
        return None
    settled: ChangeResult | Waiting = waiting
    while isinstance(settled, Waiting):
        ex.clock.sleep(settled.due - ex.clock.monotonic())
        settled = ex.waits.poll(settled, run_id, None)
    return settled.error
