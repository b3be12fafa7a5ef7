"""What an execution is: one call of a deployment recorded applied in an environment,
with its trigger, status, timings, usage, cost and (capped, redacted) result."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from reconciler.state.base import LockInfo, is_stale, this_process

#: Why an execution happened: by hand (`reconciler run`), a Schedule's fire, a check, an eval.
ExecutionTrigger = Literal["manual", "schedule", "check", "eval"]
TRIGGERS: tuple[ExecutionTrigger, ...] = ("manual", "schedule", "check", "eval")

#: `pending → running → completed | failed`; a fire that could not start is `missed`
#: (past its deadline), `skipped` (its deployment suspended, or `forbid` with one
#: running) or `cancelled` (`replace` started a newer one).
ExecutionStatus = Literal[
    "pending", "running", "completed", "failed", "missed", "skipped", "cancelled"
]
STATUSES: tuple[ExecutionStatus, ...] = (
    "pending", "running", "completed", "failed", "missed", "skipped", "cancelled",
)  # fmt: skip
#: Statuses an execution never leaves.
FINAL: frozenset[str] = frozenset({"completed", "failed", "missed", "skipped", "cancelled"})
#: What the next reader writes on an execution whose process died mid-call.
INTERRUPTED = "interrupted: the process running it died before it finished"
#: How long past its deadline an execution whose holder cannot be seen (another machine)
#: stays `pending` / `running` before any reader records it failed: room for clock skew
#: between machines and for recording an outcome that arrived just in time.
ABANDON_GRACE = timedelta(seconds=60)

#: Bytes of an input or a result kept in state by default (`executions.maxResultBytes`).
DEFAULT_MAX_BYTES = 64 * 1024
#: Executions kept per environment by default (`executions.keep`).
DEFAULT_KEEP = 10_000


def new_id(at: datetime) -> str:
    """Time-ordered and unique across processes: `ex-20261207T051200123-3f9a1c`."""
    return f"ex-{at.strftime('%Y%m%dT%H%M%S%f')[:-3]}-{secrets.token_hex(3)}"


def iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) and text else None


def fire_key(schedule: str, environment: str, fire_time: datetime) -> str:
    """The one key per (schedule, environment, fire time): state refuses a second."""
    return f"{environment}/{schedule}@{iso(fire_time)}"


@dataclass
class Holder:
    """The process running an execution, so a reader can tell one that died."""

    host: str
    machine: str
    pid: int

    @classmethod
    def me(cls) -> Holder:
        info = this_process("", "")
        return cls(info.host, info.machine, os.getpid())

    def abandoned_text(self, deadline: datetime) -> str:
        return (
            f"abandoned: its holder ({self.host}, pid {self.pid}) recorded no outcome by "
            f"its deadline {iso(deadline)}"
        )

    def alive_here(self) -> bool:
        """Known alive: it runs on this machine and its pid is still there (a call of
        its own may outlast the deadline recorded for it; it is not abandoned)."""
        me = this_process("", "")
        return self.host == me.host and self.machine == me.machine and not self.gone()

    def gone(self) -> bool:
        """Known dead: it ran where this process runs and its pid is gone (fail closed
        anywhere else, as for locks: `state.base.is_stale`)."""
        me = this_process("", "")
        at = datetime.now(UTC)
        return is_stale(LockInfo("", "", "", self.host, self.pid, at, self.machine), me)


@dataclass
class Execution:
    id: str
    environment: str
    deployment: str
    trigger: ExecutionTrigger
    status: ExecutionStatus
    created_at: datetime
    #: The applied record invoked: its spec hash, the run that applied it, its commit.
    spec_hash: str | None = None
    applied_run: str | None = None
    commit: str | None = None
    provider: str | None = None
    schedule: str | None = None
    fire_time: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    latency_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: None when no price is declared: unknown, never 0.
    cost: float | None = None
    currency: str | None = None
    #: The input as JSON and the result as text, redacted and capped.
    input: str = "{}"
    result: str | None = None
    #: The result's size before capping, and whether it was cut.
    result_bytes: int | None = None
    truncated: bool = False
    error: str | None = None
    holder: Holder | None = field(default=None, compare=False)
    #: By when its holder records an outcome: the call's own deadline once running; for
    #: a pending fire, the latest it could start and end behind the calls queued before
    #: it. Past it (and ABANDON_GRACE) any reader records it failed: a holder on another
    #: machine cannot be seen to die, but it cannot outlive its deadline either.
    deadline: datetime | None = None
    #: A check's execution (trigger `check`): the check, the evidence digest of what it
    #: called, whether its expectations held, and each with its measured value.
    check: str | None = None
    digest: str | None = None
    passed: bool | None = None
    expectations: list[dict[str, Any]] = field(default_factory=list)
    #: An eval's execution (trigger `eval`; `check` names the Eval): the run it is part
    #: of, the eval digest (`checks.evidence.eval_digest`), the calls that run planned
    #: (fewer recorded: it stopped early), and whether it was advisory (run for a pull
    #: request: shown, never counted as evidence).
    eval_run: str | None = None
    eval_digest: str | None = None
    planned: int | None = None
    advisory: bool = False
    #: With a baseline: the digest the baseline environment ran when the run started
    #: (None: nothing applied there) and the pass rate of its latest run of this eval
    #: (None: none recorded).
    baseline: dict[str, Any] | None = None
    #: The whole answer (redacted) when `result` was cut to the size kept: what checks
    #: and evals judge. Never stored or shown.
    answer: str | None = field(default=None, compare=False, repr=False)

    @property
    def fire_key(self) -> str | None:
        """A schedule's fire, or a re-check's claim on its due time (`check:NAME`: no
        schedule name holds a colon)."""
        if self.fire_time is None:
            return None
        if self.schedule is not None:
            return fire_key(self.schedule, self.environment, self.fire_time)
        if self.trigger == "check" and self.check is not None:
            return fire_key(f"check:{self.check}", self.environment, self.fire_time)
        return None

    def document(self) -> dict[str, Any]:
        """The stored and `--json` form (docs/design.md, "Executions")."""
        return {
            "id": self.id,
            "environment": self.environment,
            "deployment": self.deployment,
            "trigger": self.trigger,
            "status": self.status,
            "created_at": iso(self.created_at),
            "spec_hash": self.spec_hash,
            "applied_run": self.applied_run,
            "commit": self.commit,
            "provider": self.provider,
            "schedule": self.schedule,
            "fire_time": iso(self.fire_time),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "latency_ms": self.latency_ms,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
            "cost": self.cost,
            "currency": self.currency,
            "input": self.input,
            "result": self.result,
            "result_bytes": self.result_bytes,
            "truncated": self.truncated,
            "error": self.error,
            "holder": None if self.holder is None else vars(self.holder),
            "deadline": iso(self.deadline),
            **(
                {}
                if self.check is None
                else {
                    "check": self.check,
                    "digest": self.digest,
                    "passed": self.passed,
                    "expectations": list(self.expectations),
                }
            ),
            **(
                {}
                if self.eval_run is None
                else {
                    "eval_run": self.eval_run,
                    "eval_digest": self.eval_digest,
                    "planned": self.planned,
                    "advisory": self.advisory,
                    "baseline": self.baseline,
                }
            ),
        }

    def to_json(self) -> str:
        return json.dumps(self.document(), sort_keys=True)

    @classmethod
    def from_document(cls, d: dict[str, Any]) -> Execution:
        usage = d.get("usage") or {}
        holder = d.get("holder")
        return cls(
            id=d["id"],
            environment=d["environment"],
            deployment=d["deployment"],
            trigger=d["trigger"],
            status=d["status"],
            created_at=parse_time(d["created_at"]) or datetime.now(UTC),
            spec_hash=d.get("spec_hash"),
            applied_run=d.get("applied_run"),
            commit=d.get("commit"),
            provider=d.get("provider"),
            schedule=d.get("schedule"),
            fire_time=parse_time(d.get("fire_time")),
            started_at=parse_time(d.get("started_at")),
            finished_at=parse_time(d.get("finished_at")),
            latency_ms=d.get("latency_ms"),
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            cost=d.get("cost"),
            currency=d.get("currency"),
            input=d.get("input") or "{}",
            result=d.get("result"),
            result_bytes=d.get("result_bytes"),
            truncated=bool(d.get("truncated")),
            error=d.get("error"),
            holder=Holder(**holder) if isinstance(holder, dict) else None,
            deadline=parse_time(d.get("deadline")),
            check=d.get("check"),
            digest=d.get("digest"),
            passed=d.get("passed"),
            expectations=list(d.get("expectations") or []),
            eval_run=d.get("eval_run"),
            eval_digest=d.get("eval_digest"),
            planned=d.get("planned"),
            advisory=bool(d.get("advisory")),
            baseline=d.get("baseline"),
        )


@dataclass(frozen=True)
class Query:
    """Which executions to list; newest first, at most `limit`."""

    environments: tuple[str, ...] = ()
    deployments: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    schedule: str | None = None
    since: datetime | None = None
    limit: int | None = 100

    def matches(self, ex: Execution) -> bool:
        return (
            (not self.environments or ex.environment in self.environments)
            and (not self.deployments or ex.deployment in self.deployments)
            and (not self.statuses or ex.status in self.statuses)
            and (self.schedule is None or ex.schedule == self.schedule)
            and (self.since is None or ex.created_at >= self.since)
        )
