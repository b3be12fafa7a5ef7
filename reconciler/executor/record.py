"""What one write is and how the state records it: a planned change or a restore's
inverse change, each a `Write` that the same provider call makes (`change.py`) and the
same records describe once it holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reconciler.instances import Instance
from reconciler.plan import Change
from reconciler.state.base import AppliedRecord, ChangeRecord, StateStore
from reconciler.vocabulary import Action, ChangeOutcome

from .model import ROLLBACK_REASON


@dataclass(frozen=True, slots=True)
class Live:
    """The object a provider holds now, as the state or the run knows it."""

    provider: str
    provider_id: str | None


@dataclass(frozen=True, slots=True)
class Write:
    """One change to make on a provider. `change` is what is recorded and named in
    health events; `call` the provider call (a restore records `update` whatever call
    puts the old object back); `inst` the body written (None: a delete); `live` the
    object there now; `before` the state's record before a planned change, or the
    record a restore puts back as it was."""

    change: Change
    call: Action
    inst: Instance | None
    live: Live | None = None
    before: AppliedRecord | None = field(default=None, compare=False)
    restoring: bool = False

    @classmethod
    def planned(cls, ch: Change, inst: Instance | None, recorded: AppliedRecord | None) -> Write:
        live = None if recorded is None else Live(recorded.provider, recorded.provider_id)
        return cls(ch, ch.action, inst, live, before=recorded)

    @property
    def before_hash(self) -> str | None:
        if self.restoring or self.before is None:
            return None
        return self.before.spec_hash

    def applied(
        self, run_id: str, commit: str | None, provider_id: str | None, now: datetime
    ) -> tuple[ChangeRecord, AppliedRecord | None]:
        """The records of this write once it holds: the change and what is applied now
        (None: nothing, it was a delete)."""
        ch = self.change
        note = ROLLBACK_REASON if self.restoring else None
        applied: AppliedRecord | None = None
        if ch.action == "delete":
            provider_id = None
        elif self.restoring:
            old = self.before
            assert old is not None  # a restore that is no delete puts a record back
            applied = AppliedRecord(
                environment=old.environment,
                kind=old.kind,
                name=old.name,
                provider=old.provider,
                provider_id=provider_id,
                spec=old.spec,
                spec_hash=old.spec_hash,
                secret_fingerprints=old.secret_fingerprints,
                commit=old.commit,
                run_id=run_id,
                applied_at=now,
            )
        else:
            inst = self.inst
            assert inst is not None  # the provider call refused a change without one
            applied = AppliedRecord(
                environment=ch.environment,
                kind=ch.kind,
                name=ch.name,
                provider=inst.provider,
                provider_id=provider_id,
                spec=inst.body(),
                spec_hash=inst.hash(),
                secret_fingerprints=dict(ch.secret_fingerprints),
                commit=commit,
                run_id=run_id,
                applied_at=now,
                spec_json=inst.canonical(),
            )
        change = ChangeRecord(
            key=ch.key,
            action=ch.action,
            outcome="applied",
            error=note,
            provider_id=provider_id,
            before_hash=self.before_hash,
            after_hash=None if applied is None else applied.spec_hash,
            diff=diff_of(ch),
        )
        return change, applied


def record_applied(
    store: StateStore,
    w: Write,
    run_id: str,
    commit: str | None,
    provider_id: str | None,
    now: datetime,
) -> None:
    """The state says what the provider holds after `w`: at once, so a crash loses
    nothing and a re-run converges."""
    change, applied = w.applied(run_id, commit, provider_id, now)
    store.record_change(run_id, change, applied, w.change.key if applied is None else None)


def record_unapplied(
    store: StateStore,
    ch: Change,
    run_id: str,
    outcome: ChangeOutcome,
    message: str,
    provider_id: str | None = None,
) -> None:
    """A change that did not apply: the run's record says why, the state keeps what
    was applied before (a re-run tries again)."""
    change = ChangeRecord(
        key=ch.key,
        action=ch.action,
        outcome=outcome,
        error=message,
        provider_id=provider_id,
        before_hash=None,
        after_hash=None,
        diff=diff_of(ch),
    )
    store.record_change(run_id, change, None, None)


def diff_of(ch: Change) -> list[dict[str, Any]]:
    """The change's field diff as the plan showed it (secrets masked), for history."""
    return [{"path": d.path, "before": d.before, "after": d.after} for d in ch.diff]
