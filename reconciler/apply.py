"""The executor: the only code that changes providers.

Per environment, under its lock: re-check the plan against the state serial, run the
changes in dependency order with bounded concurrency, record each change in the state
the moment it succeeds (so a crash loses nothing and a re-run converges), skip the
dependants of a failed change, optionally restore what this run changed when anything
failed, and finish with a run record.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.errors import ProviderError, ReconcilerError, StateMovedError
from reconciler.instances import Instance, InstanceKey, ProviderConfig, spec_hash
from reconciler.log import get_logger, redact
from reconciler.plan import Change, EnvironmentPlan
from reconciler.providers import make_provider
from reconciler.providers.base import Provider
from reconciler.state.base import AppliedRecord, ChangeRecord, RunRecord, StateStore
from reconciler.vocabulary import ChangeOutcome, EnvironmentOutcome, Trigger

log = get_logger("reconciler.apply")


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and unique: UTC time plus randomness."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass
class RunContext:
    """What a run records beyond its changes (who, why, from where)."""

    commit: str | None
    trigger: Trigger = "apply"
    pull_request: int | None = None
    author: str | None = None
    approvers: list[str] = field(default_factory=list)
    reverted_commits: list[str] = field(default_factory=list)
    reverted_runs: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: The policy the run leaves in force: the next run is judged by it.
    policy: dict[str, Any] | None = None


@dataclass
class ChangeResult:
    change: Change
    outcome: ChangeOutcome
    error: str | None = None
    provider_id: str | None = None


@dataclass
class EnvironmentResult:
    environment: str
    outcome: EnvironmentOutcome
    run_id: str | None = None
    results: list[ChangeResult] = field(default_factory=list)
    message: str | None = None
    restored: list[ChangeResult] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = {"applied": 0, "failed": 0, "skipped": 0}
        for r in self.results:
            c[r.outcome] += 1
        return c


ProgressFn = Callable[[ChangeResult], None]


def _instance_from_body(
    key: InstanceKey, provider: str, body: Mapping[str, Any], depends: Sequence[InstanceKey] = ()
) -> Instance:
    spec = {k: v for k, v in body.items() if k not in ("name", "environment", "labels")}
    return Instance(
        environment=key.environment,
        kind=key.kind,
        name=key.name,
        provider=provider,
        spec=spec,
        labels=dict(body.get("labels") or {}),
        depends_on=tuple(depends),
    )


class _Providers:
    """Provider clients for one environment, created on first use, closed at the end."""

    def __init__(
        self, configs: Mapping[str, ProviderConfig], repo_root: Path, env: Mapping[str, str]
    ) -> None:
        self._configs = configs
        self._repo_root = repo_root
        self._env = env
        self._made: dict[str, Provider] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Provider:
        with self._lock:
            if name not in self._made:
                config = self._configs.get(name)
                if config is None:
                    raise ProviderError(
                        f"provider {name!r} is no longer declared for this environment; "
                        "restore its Provider manifest to change what it holds"
                    )
                self._made[name] = make_provider(config, repo_root=self._repo_root, env=self._env)
            return self._made[name]

    def close(self) -> None:
        for p in self._made.values():
            try:
                p.close()
            except Exception:  # closing must never hide the run's real outcome
                log.debug("provider close failed", exc_info=True)


class Executor:
    """Applies one environment's plan; see the module docstring for the guarantees."""

    def __init__(
        self,
        store: StateStore,
        *,
        desired: Mapping[InstanceKey, Instance],
        providers: Mapping[str, ProviderConfig],
        repo_root: Path,
        env: Mapping[str, str],
        parallelism: int = 8,
        progress: ProgressFn | None = None,
    ) -> None:
        self.store = store
        self.desired = desired
        self.providers = _Providers(providers, repo_root, env)
        self.parallelism = max(1, parallelism)
        self.progress = progress

    # -- one change ------------------------------------------------------------------

    def _do(self, ch: Change, run_id: str, commit: str | None) -> ChangeResult:
        env, kind, name = ch.key
        recorded = self.store.applied(env).get(ch.key) if ch.action != "create" else None
        try:
            provider_id: str | None = None
            if ch.action == "delete":
                old_id = recorded.provider_id if recorded else None
                self.providers.get(ch.provider).delete(kind, name, env, old_id)
            else:
                inst = self.desired.get(ch.key)
                if inst is None:
                    raise ReconcilerError(f"{ch.address} is not in the desired state any more")
                prov = self.providers.get(inst.provider)
                if ch.action == "create":
                    provider_id = prov.create(inst)
                elif ch.action == "update":
                    provider_id = recorded.provider_id if recorded else None
                    if provider_id is None:
                        provider_id = prov.create(inst)
                    else:
                        prov.update(inst, provider_id)
                else:  # replace: remove the old object (maybe on another provider), then create
                    if recorded is not None:
                        self.providers.get(recorded.provider).delete(
                            kind, name, env, recorded.provider_id
                        )
                    provider_id = prov.create(inst)
        except ReconcilerError as e:
            return self._record_failure(ch, run_id, e.message)
        except Exception as e:  # a provider plugin's bug must not lose the run record
            return self._record_failure(ch, run_id, f"{type(e).__name__}: {e}")
        self._record_success(ch, run_id, commit, provider_id, recorded)
        return ChangeResult(ch, "applied", provider_id=provider_id)

    def _record_success(
        self,
        ch: Change,
        run_id: str,
        commit: str | None,
        provider_id: str | None,
        recorded: AppliedRecord | None,
    ) -> None:
        before_hash = recorded.spec_hash if recorded else None
        if ch.action == "delete":
            self.store.record_change(
                run_id,
                ChangeRecord(ch.key, ch.action, "applied", None, None, before_hash, None),
                None,
                ch.key,
            )
            return
        inst = self.desired[ch.key]
        body = inst.body()
        applied = AppliedRecord(
            environment=ch.key.environment,
            kind=ch.key.kind,
            name=ch.key.name,
            provider=inst.provider,
            provider_id=provider_id,
            spec=body,
            spec_hash=spec_hash(body),
            secret_fingerprints=dict(ch.secret_fingerprints),
            commit=commit,
            run_id=run_id,
            applied_at=datetime.now(UTC),
        )
        self.store.record_change(
            run_id,
            ChangeRecord(
                ch.key, ch.action, "applied", None, provider_id, before_hash, applied.spec_hash
            ),
            applied,
            None,
        )

    def _record_failure(self, ch: Change, run_id: str, message: str) -> ChangeResult:
        message = redact(message)
        self.store.record_change(
            run_id, ChangeRecord(ch.key, ch.action, "failed", message, None, None, None), None, None
        )
        return ChangeResult(ch, "failed", error=message)

    # -- the whole environment ---------------------------------------------------------

    def run(self, plan: EnvironmentPlan, run_id: str, commit: str | None) -> list[ChangeResult]:
        """Execute in dependency order; independent changes run concurrently."""
        pending = {c.key: c for c in plan.changes}
        order = [c.key for c in plan.changes]
        done: dict[InstanceKey, ChangeResult] = {}
        running: dict[Future[ChangeResult], InstanceKey] = {}
        with ThreadPoolExecutor(max_workers=self.parallelism) as pool:
            while pending or running:
                for key in order:
                    ch = pending.get(key)
                    if ch is None or len(running) >= self.parallelism:
                        continue
                    deps = [d for d in ch.depends_on if d in pending or d in running.values()]
                    failed = [
                        d for d in ch.depends_on if d in done and done[d].outcome != "applied"
                    ]
                    if failed:
                        del pending[key]
                        res = ChangeResult(ch, "skipped", error=f"{_addr(failed[0])} did not apply")
                        self.store.record_change(
                            run_id,
                            ChangeRecord(key, ch.action, "skipped", res.error, None, None, None),
                            None,
                            None,
                        )
                        done[key] = res
                        self._report(res)
                        continue
                    if deps:
                        continue
                    del pending[key]
                    running[pool.submit(self._do, ch, run_id, commit)] = key
                if not running:
                    if pending:  # a dependency cycle cannot come from expansion; be safe
                        raise ReconcilerError("changes wait on each other; refusing to guess")
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    key = running.pop(fut)
                    res = fut.result()
                    done[key] = res
                    self._report(res)
        return [done[k] for k in order]

    def _report(self, res: ChangeResult) -> None:
        ch = res.change
        log.info(
            "change",
            environment=ch.environment,
            action=ch.action,
            kind=ch.kind,
            name=ch.name,
            outcome=res.outcome,
            error=res.error,
        )
        if self.progress:
            self.progress(res)

    def restore(
        self,
        results: Sequence[ChangeResult],
        before: Mapping[InstanceKey, AppliedRecord],
        run_id: str,
        commit: str | None,
    ) -> list[ChangeResult]:
        """Put back the recorded specs of what this run changed (newest first)."""
        restored: list[ChangeResult] = []
        for res in reversed([r for r in results if r.outcome == "applied"]):
            ch = res.change
            old = before.get(ch.key)
            try:
                if old is None:  # it was created: remove it
                    undo = Change("delete", ch.key, self._current_provider(ch), None, None)
                    self.providers.get(undo.provider).delete(
                        ch.kind, ch.name, ch.environment, res.provider_id
                    )
                    self.store.record_change(
                        run_id,
                        ChangeRecord(
                            ch.key, "delete", "applied", "rollback-on-failure", None, None, None
                        ),
                        None,
                        ch.key,
                    )
                else:
                    inst = _instance_from_body(ch.key, old.provider, old.spec)
                    prov = self.providers.get(old.provider)
                    live_id = old.provider_id
                    if ch.action in ("delete", "replace"):
                        if ch.action == "replace" and res.provider_id:
                            self.providers.get(ch.provider).delete(
                                ch.kind, ch.name, ch.environment, res.provider_id
                            )
                        live_id = prov.create(inst)
                    elif live_id is not None:
                        prov.update(inst, live_id)
                    else:
                        live_id = prov.create(inst)
                    rec = AppliedRecord(
                        **{
                            **old.__dict__,
                            "provider_id": live_id,
                            "run_id": run_id,
                            "applied_at": datetime.now(UTC),
                        }
                    )
                    self.store.record_change(
                        run_id,
                        ChangeRecord(
                            ch.key,
                            "update",
                            "applied",
                            "rollback-on-failure",
                            live_id,
                            None,
                            old.spec_hash,
                        ),
                        rec,
                        None,
                    )
                restored.append(ChangeResult(ch, "applied"))
            except ReconcilerError as e:
                restored.append(ChangeResult(ch, "failed", error=redact(e.message)))
        return restored

    def _current_provider(self, ch: Change) -> str:
        inst = self.desired.get(ch.key)
        return inst.provider if inst else ch.provider

    def close(self) -> None:
        self.providers.close()


def _addr(key: InstanceKey) -> str:
    return key.address


def host_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_environment(
    store: StateStore,
    plan: EnvironmentPlan,
    *,
    desired: Mapping[InstanceKey, Instance],
    providers: Mapping[str, ProviderConfig],
    repo_root: Path,
    env: Mapping[str, str],
    context: RunContext,
    parallelism: int = 8,
    rollback_on_failure: bool = False,
    break_lock: bool = False,
    replan: Callable[[], EnvironmentPlan] | None = None,
    progress: ProgressFn | None = None,
) -> EnvironmentResult:
    """Lock, verify, run, record. `replan` recomputes the plan under the lock; without
    it (a saved plan) the state serial must still be the one the plan was made at."""
    envname = plan.environment
    run_id = new_run_id()
    with store.lock(envname, run_id, break_lock=break_lock):
        current = store.serial(envname)
        if replan is not None:
            plan = replan()
        elif current != plan.serial:
            raise StateMovedError(
                f"state of {envname!r} moved since the plan was made (serial {plan.serial} → "
                f"{current}): run `reconciler plan` again"
            )
        if not plan.changes:
            return EnvironmentResult(envname, "noop", message="no changes")
        details = dict(context.details)
        if break_lock:
            details["broke_lock"] = True
        before = store.applied(envname)
        store.begin_run(
            RunRecord(
                id=run_id,
                environment=envname,
                commit=context.commit,
                trigger=context.trigger,
                started_at=datetime.now(UTC),
                finished_at=None,
                outcome="running",
                pull_request=context.pull_request,
                author=context.author,
                approvers=list(context.approvers),
                reverted_commits=list(context.reverted_commits),
                reverted_runs=list(context.reverted_runs),
                changes=[],
                details=details,
                policy=context.policy,
            )
        )
        ex = Executor(
            store,
            desired=desired,
            providers=providers,
            repo_root=repo_root,
            env=env,
            parallelism=parallelism,
            progress=progress,
        )
        try:
            results = ex.run(plan, run_id, context.commit)
            failed = [r for r in results if r.outcome != "applied"]
            restored: list[ChangeResult] = []
            if failed and rollback_on_failure:
                restored = ex.restore(results, before, run_id, context.commit)
                details["rolled_back"] = [_addr(r.change.key) for r in restored]
        finally:
            ex.close()
        outcome: EnvironmentOutcome = "failed" if failed else "applied"
        store.finish_run(run_id, outcome, details)
        message = None
        if failed:
            first = (
                next(r for r in results if r.outcome == "failed")
                if any(r.outcome == "failed" for r in results)
                else failed[0]
            )
            message = f"{first.change.address}: {first.error}"
        return EnvironmentResult(envname, outcome, run_id, results, message, restored)
