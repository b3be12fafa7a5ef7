"""`reconciler watch`: re-validate and re-plan on every save (`reconciler.watch` keeps the
parsed manifests between saves); with `--apply`, apply what needs no approval."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.engine.apply import ApplyRequest, apply
from reconciler.engine.context import secret_env
from reconciler.load import desired_secrets
from reconciler.manifests import Desired, ManifestError
from reconciler.plan import make_plan
from reconciler.session import Session
from reconciler.views import plan as plan_view
from reconciler.watch import ManifestCache


@dataclass
class WatchSession:
    """One `reconciler watch`: what each save prints (and, with --apply, applies)."""

    session: Session
    environments: tuple[str, ...] = ()
    apply: bool = False
    write: Callable[[str], None] = print
    cache: ManifestCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = ManifestCache(self.session.settings)

    def on_change(self, changed: Iterable[Path] | None) -> None:
        try:
            self._on_change(changed)
        finally:
            self.cache.settle()  # after the output: its cost is off the save's path

    def _on_change(self, changed: Iterable[Path] | None) -> None:
        started = time.perf_counter()
        try:
            desired = self.cache.refresh(changed)
        except ManifestError as e:
            self.write("\n".join(str(d) for d in e.diagnostics))
            self.write(f"-- {len(e.diagnostics)} problem(s); watching for the next save")
            return
        self.session.redactor.add(desired_secrets(desired, self.session.settings.env).values())
        with self.session.open_store(read_only=True) as store:
            plan = make_plan(
                desired,
                store,
                commit=self.cache.repo.head(),
                dirty=True,
                environments=self.environments or None,
                secret_env=secret_env(self.session, desired),
            )
        elapsed = (time.perf_counter() - started) * 1000
        self.write(plan_view.human(plan, color=False).rstrip("\n"))
        self.write(f"-- planned in {elapsed:.0f} ms; watching (Ctrl-C to stop)")
        if self.apply and plan.has_changes:
            self._apply(desired, [e.environment for e in plan.environments if e.changes])

    def _apply(self, desired: Desired, changed_envs: list[str]) -> None:
        """Only environments that need no approvals for these changes: watch is a dev
        loop, never a way around review."""
        free = [
            e
            for e in changed_envs
            if not desired.policy(e).protected
            and desired.policy(e).approvals.required_for("critical") == 0
        ]
        skipped = sorted(set(changed_envs) - set(free))
        if skipped:
            self.write(f"-- not applying {', '.join(skipped)}: approvals required")
        if not free:
            return
        report = apply(self.session, ApplyRequest(environments=free, working_tree=True))
        for r in report.results:
            c = r.counts()
            self.write(f"-- {r.environment}: {r.outcome} ({c['applied']} applied)")
