"""Re-checks: each Check with an `interval` runs again on what its environment has
applied, through the same run path as after apply (`runner.run_requests`), recorded with
trigger `check`. The gate counts a failure since the deployment was applied, so a failed
re-check revokes its verified status until it is applied again.

What it promises (docs/design.md, "Verified promotion"):
- Only what is recorded applied is checked: the deployment's applied record, with the
  Check and the provider settings of the commit the environment was last applied from
  (a newer commit on the branch may still be blocked by the gate). An environment last
  applied from a working tree (no commit) has no checks of record: none runs.
- Due times are `applied_at + k × interval` (k ≥ 1): the same on every agent, whatever
  its clock showed when it looked. A due time missed while no agent ran is not caught
  up: the latest one runs, once.
- Exactly once per (check, environment, due time): the first request's execution is
  recorded `pending` with that key before anything is called (`Execution.fire_key`),
  and state refuses a second, so agents sharing a PostgreSQL database never both run it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from reconciler.checks.evidence import evidence_digest_of
from reconciler.checks.runner import RequestResult, run_requests
from reconciler.config import Settings
from reconciler.errors import ReconcilerError
from reconciler.instances import InstanceKey, ProviderConfig
from reconciler.log import get_logger, redact
from reconciler.manifests import Desired
from reconciler.manifests.models import Check
from reconciler.providers import make_provider
from reconciler.providers.base import Provider
from reconciler.runs.execute import Limits, deadline_of, describe_input
from reconciler.runs.model import Execution, Holder, Query, new_id
from reconciler.runs.store import ExecutionStore
from reconciler.schedules import parse_interval
from reconciler.state.base import AppliedRecord, StateStore

log = get_logger("reconciler.checks")

#: The manifests of a commit (the agent: `session.load(commit).desired`).
LoadCommit = Callable[[str], Desired]


def due_at(applied_at: datetime, interval: timedelta, now: datetime) -> datetime | None:
    """The latest due time at or before `now` (None: the first is still ahead)."""
    k = (now - applied_at) // interval
    return applied_at + k * interval if k >= 1 else None


def next_due(applied_at: datetime, interval: timedelta, now: datetime) -> datetime:
    """The first due time after `now`."""
    return applied_at + (max(0, (now - applied_at) // interval) + 1) * interval


@dataclass(frozen=True)
class Recheck:
    """One re-check this engine ran: each request's result, and how the check's previous
    run (a re-check, or the check after apply) ended: None when none is recorded since
    the deployment was applied."""

    environment: str
    check: str
    deployment: str
    due: datetime
    digest: str
    results: tuple[RequestResult, ...]
    previous_passed: bool | None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[str]:
        return [r.failure for r in self.results if r.failure is not None]


@dataclass
class _Due:
    environment: str
    check: Check
    record: AppliedRecord
    provider: ProviderConfig | None
    due: datetime


@dataclass
class RecheckEngine:
    """Runs the re-checks due on `tick(state, now)`, one after another."""

    settings: Settings
    executions: ExecutionStore
    load_commit: LoadCommit
    environments: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    #: What each call's start and end are recorded with (`tick`'s `now` says what is due).
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    #: Makes a provider from its settings of record (tests give an in-memory one).
    make: Callable[[ProviderConfig], Provider] | None = None
    #: When each (environment, check) is due next, as of the last tick.
    upcoming: dict[tuple[str, str], datetime] = field(default_factory=dict)
    _ran: dict[tuple[str, str], datetime] = field(default_factory=dict)
    _desired: dict[str, Desired] = field(default_factory=dict)
    _providers: dict[tuple[str, str, str], Provider] = field(default_factory=dict)
    _said: set[str] = field(default_factory=set)

    def next_due(self) -> datetime | None:
        return min(self.upcoming.values(), default=None)

    def due(self, state: StateStore, now: datetime) -> list[_Due]:
        """What is due at `now` and not yet run by this engine; `upcoming` is updated."""
        self.upcoming = {}
        out: list[_Due] = []
        used: set[str] = set()
        for env in state.environments():
            if self.environments and env not in self.environments:
                continue
            last = state.last_applied_run(env)
            if last is None or last.commit is None:
                continue
            desired = self._desired_at(last.commit)
            if desired is None:
                continue
            used.add(last.commit)
            checks = [
                e.model
                for e in desired.manifests.checks.values()
                if env in e.model.spec.environments and e.model.spec.interval
            ]
            if not checks:
                continue
            applied = state.applied(env)
            for check in checks:
                rec = applied.get(InstanceKey(env, "Deployment", check.spec.deployment))
                if rec is None or rec.spec.get("suspended") is True:
                    continue  # nothing applied, or nothing that takes calls: no check
                every = parse_interval(str(check.spec.interval))
                name = (env, check.metadata.name)
                self.upcoming[name] = next_due(rec.applied_at, every, now)
                at = due_at(rec.applied_at, every, now)
                if at is None or self._ran.get(name) == at:
                    continue
                config = desired.providers.get(env, {}).get(rec.provider)
                out.append(_Due(env, check, rec, config, at))
        for commit in set(self._desired) - used:  # keep only the commits of record
            del self._desired[commit]
        return out

    def tick(self, state: StateStore, now: datetime) -> list[Recheck]:
        """Run every re-check due at `now` that no other engine claimed first."""
        out = []
        for d in self.due(state, now):
            self._ran[(d.environment, d.check.metadata.name)] = d.due
            try:
                done = self._run(d, now)
            except ReconcilerError as e:
                log.error(
                    "check.recheck_error",
                    check=d.check.metadata.name,
                    env=d.environment,
                    error=redact(e.message),
                )
                continue
            if done is not None:
                out.append(done)
        return out

    def _run(self, d: _Due, now: datetime) -> Recheck | None:
        rec, name = d.record, d.check.metadata.name
        if d.provider is None:
            raise ReconcilerError(
                f"provider {rec.provider!r} is not declared for {d.environment!r} in the "
                "commit it was last applied from"
            )
        digest = evidence_digest_of(rec.spec, d.provider.type)
        claim = Execution(new_id(now), d.environment, rec.name, "check", "pending", now)
        claim.fire_time, claim.check, claim.digest = d.due, name, digest
        claim.holder = Holder.me()
        claim.input = describe_input(d.check.spec.requests[0].input, self.limits)
        # every request may have to wait its own deadline before this one is done
        calls = len(d.check.spec.requests)
        claim.deadline = now + timedelta(seconds=deadline_of(rec.spec) * calls)
        # made before the claim: a provider that cannot be made claims nothing
        provider = self._provider(d.environment, rec.provider, d.provider)
        if not self.executions.add(claim):  # another engine has this due time
            log.debug(
                "check.recheck_elsewhere", check=name, env=d.environment, due=d.due.isoformat()
            )
            return None
        try:
            previous = self._previous(d, claim.id)
        except ReconcilerError as e:  # never a claim left pending for good
            claim.status, claim.finished_at = "failed", self.clock()
            claim.error = redact(e.message)
            self.executions.transition(claim, ("pending",))
            raise
        results = run_requests(
            d.check,
            rec,
            digest,
            provider,
            self.executions,
            limits=self.limits,
            clock=self.clock,
            claimed=claim,
        )
        done = Recheck(d.environment, name, rec.name, d.due, digest, tuple(results), previous)
        log.info(
            "check.recheck",
            check=name,
            env=d.environment,
            deployment=rec.name,
            due=d.due.isoformat(),
            outcome="passed" if done.passed else "failed",
            failures=[redact(f) for f in done.failures][:10],
        )
        return done

    def _previous(self, d: _Due, current: str) -> bool | None:
        """How the check's latest run before this one ended, since the deployment was
        applied: the newest re-check (its requests back to its claim, the one with a due
        time), else the check after apply. Read from state, so an agent that did not run
        it (another agent did) knows too."""
        name = d.check.metadata.name
        rec = d.record
        query = Query((d.environment,), (rec.name,), since=rec.applied_at, limit=None)
        found = self.executions.find(query)
        run: list[Execution] = []
        for ex in found:  # newest first
            if ex.id == current or ex.trigger != "check" or ex.check != name:
                continue
            if ex.passed is not None:
                run.append(ex)
            if ex.fire_time is not None:
                break  # a re-check's claim: its first request
        if not run:
            return None
        return all(ex.passed for ex in run)

    def _desired_at(self, commit: str) -> Desired | None:
        if commit not in self._desired:
            try:
                self._desired[commit] = self.load_commit(commit)
            except ReconcilerError as e:
                if commit not in self._said:
                    self._said.add(commit)
                    log.error("check.commit_unreadable", commit=commit, error=redact(e.message))
                return None
        return self._desired[commit]

    def _provider(self, env: str, name: str, config: ProviderConfig) -> Provider:
        key = (env, name, repr(config))
        made = self._providers.get(key)
        if made is None:
            s = self.settings
            made = (
                self.make(config)
                if self.make is not None
                else make_provider(config, repo_root=s.repo, env=s.env)
            )
            self._providers[key] = made
        return made

    def close(self) -> None:
        for p in self._providers.values():
            p.close()
        self._providers.clear()
