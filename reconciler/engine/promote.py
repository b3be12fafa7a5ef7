"""`reconciler promote --from A --to B [DEPLOYMENT…]`: what A has *applied* (from the
recorded state, never A's manifests at HEAD), whether each deployment is eligible for B
under B's promotion policy, and the smallest manifest edit that makes B resolve to what
A runs, optionally committed on a branch. Apply re-checks the evidence in state: what
promote writes is a proposal, never evidence."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from reconciler.checks.evidence import evidence_digest_of
from reconciler.engine.forge import forge
from reconciler.errors import EXIT_BLOCKED, EXIT_OK, ConfigError, GitError
from reconciler.gate.evidence import evidence_for
from reconciler.gate.judge import Evidence, not_eligible
from reconciler.instances import InstanceKey
from reconciler.load import Loaded
from reconciler.manifests import Desired
from reconciler.manifests.models import Promotion
from reconciler.manifests.yamlload import load_documents
from reconciler.policy import Policy, required_evals
from reconciler.runs.metrics import UsageRow, usage
from reconciler.runs.model import Query
from reconciler.runs.store import ExecutionStore
from reconciler.session import Session
from reconciler.state.base import AppliedRecord, StateStore

#: The fields a promotion edits: what the evidence digest covers and a manifest sets.
FIELDS = ("model", "prompt", "options")


@dataclass(frozen=True)
class Usage:
    """What one instance served since it was applied (its executions, every trigger):
    the numbers a reviewer weighs a promotion by."""

    requests: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    #: Per completed call; None when any call had no declared price (unknown, never 0).
    cost_per_request: float | None
    currency: str | None

    @classmethod
    def of(cls, row: UsageRow | None) -> Usage | None:
        """None: no runs yet (nothing called since it was applied)."""
        if row is None or row.requests == 0:
            return None
        total = row.total_cost
        per = None if total is None else round(total / row.completed, 10)
        currency = next(iter(row.currencies)) if len(row.currencies) == 1 else None
        return cls(row.requests, row.success_rate, row.latency(50), row.latency(95), per, currency)

    def document(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "successRate": self.success_rate,
            "latencyMs": {"p50": self.p50_ms, "p95": self.p95_ms},
            "costPerRequest": self.cost_per_request,
            "currency": self.currency,
        }

    def summary(self) -> str:
        return ", ".join(
            [
                f"{self.requests} request" + ("" if self.requests == 1 else "s"),
                f"success {_percent(self.success_rate)}",
                f"p50 latency {_ms(self.p50_ms)}",
                f"p95 latency {_ms(self.p95_ms)}",
                f"cost per request {_cost(self.cost_per_request, self.currency)}",
            ]
        )


@dataclass(frozen=True)
class Delta:
    """One metric, the target's current instance → what the source runs."""

    metric: str
    before: float | None
    after: float | None
    #: "count", "ratio", "ms" or "cost" (each side in its own currency).
    unit: str
    currencies: tuple[str | None, str | None] = (None, None)

    @property
    def change(self) -> float | None:
        """Relative change, for latency and cost (in one currency) only; None where
        either side is unknown."""
        if self.unit in ("count", "ratio") or self.before is None or self.after is None:
            return None
        if self.unit == "cost" and self.currencies[0] != self.currencies[1]:
            return None
        return None if self.before == 0 else (self.after - self.before) / self.before

    def text(self) -> str:
        if self.unit == "cost":
            a, b = _cost(self.before, self.currencies[0]), _cost(self.after, self.currencies[1])
        elif self.unit == "ratio":
            a, b = _percent(self.before), _percent(self.after)
        elif self.unit == "ms":
            a, b = _ms(self.before), _ms(self.after)
        else:
            a, b = f"{self.before:.0f}", f"{self.after:.0f}"
        out = f"{self.metric} {a} → {b}"
        if self.change is not None:
            pct = round(100 * self.change)
            out += f" ({'+' if pct > 0 else '−' if pct < 0 else '±'}{abs(pct)}%)"
        return out

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"metric": self.metric, "from": self.before, "to": self.after,
               "unit": self.unit, "change": self.change}  # fmt: skip
        if self.unit == "cost":
            doc["currency"] = {"from": self.currencies[0], "to": self.currencies[1]}
        return doc


def deltas(before: Usage, after: Usage) -> list[Delta]:
    return [
        Delta("requests", before.requests, after.requests, "count"),
        Delta("success", before.success_rate, after.success_rate, "ratio"),
        Delta("p50 latency", before.p50_ms, after.p50_ms, "ms"),
        Delta("p95 latency", before.p95_ms, after.p95_ms, "ms"),
        Delta(
            "cost per request",
            before.cost_per_request,
            after.cost_per_request,
            "cost",
            (before.currency, after.currency),
        ),
    ]


def _percent(v: float | None) -> str:
    return "unknown" if v is None else f"{100 * v:.1f}%"


def _ms(v: float | None) -> str:
    return "unknown" if v is None else f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"


def _cost(v: float | None, currency: str | None) -> str:
    return "unknown" if v is None else f"{v:.6f} {currency or 'USD'}"


@dataclass
class Item:
    deployment: str
    #: The evidence digest the source runs, and the target's applied one.
    digest: str
    target_digest: str | None
    #: field → (target's resolved value at HEAD, source's applied value).
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    blocked: str | None = None
    evidence: Evidence | None = None
    #: Usage since each side was applied: what the source runs, the target's current
    #: instance (None: no runs yet, or nothing applied in the target).
    source_usage: Usage | None = None
    target_usage: Usage | None = None

    @property
    def deltas(self) -> list[Delta]:
        if self.source_usage is None or self.target_usage is None:
            return []
        return deltas(self.target_usage, self.source_usage)

    def usage_lines(self, source: str, target: str) -> list[str]:
        """The usage comparison as reviewers read it (the CLI and the PR body)."""
        if self.source_usage is None and self.target_usage is None:
            return [f"usage: no runs yet in {target} or {source}"]
        if self.source_usage is None or self.target_usage is None:
            return [
                f"usage in {env}: {'no runs yet' if u is None else u.summary()}"
                for env, u in ((target, self.target_usage), (source, self.source_usage))
            ]
        return [f"usage ({target} now → {source}):", *(d.text() for d in self.deltas)]

    def document(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "digest": self.digest,
            "targetDigest": self.target_digest,
            "changes": {k: {"from": a, "to": b} for k, (a, b) in self.changes.items()},
            "eligible": self.blocked is None,
            "blocked": self.blocked,
            "usage": {
                "source": None if self.source_usage is None else self.source_usage.document(),
                "target": None if self.target_usage is None else self.target_usage.document(),
                "deltas": [d.document() for d in self.deltas],
            },
        }


@dataclass
class PromoteReport:
    source: str
    target: str
    policy: str
    items: list[Item] = field(default_factory=list)
    branch: str | None = None
    commit: str | None = None
    pushed: bool = False
    pull_request: int | None = None
    pull_request_url: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_BLOCKED if any(i.blocked for i in self.items) else EXIT_OK

    def document(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "to": self.target,
            "policy": self.policy,
            "deployments": [i.document() for i in self.items],
            "branch": self.branch,
            "commit": self.commit,
            "pushed": self.pushed,
            "pullRequest": self.pull_request,
            "pullRequestUrl": self.pull_request_url,
        }


def promote(
    session: Session,
    source: str,
    target: str,
    deployments: Sequence[str] = (),
    *,
    branch: str | None = None,
    push: bool = False,
    open_pr: bool = False,
    now: datetime | None = None,
) -> PromoteReport:
    if (push or open_pr) and branch is None:
        raise ConfigError("--push and --open-pr need --branch: the pull request's head")
    # fail before writing anything when the forge is not configured
    source_forge = forge(session, "--open-pr") if open_pr else None
    try:
        report = _promote(session, source, target, deployments, branch, now)
        if branch is not None and (push or open_pr):
            repo = session.repo
            if repo.repo.head.is_detached:
                raise GitError("HEAD is detached: cannot tell which branch the PR targets")
            repo.push(branch)
            report.pushed = True
            if source_forge is not None:
                base = repo.repo.active_branch.name
                title = f"Promote {', '.join(i.deployment for i in report.items if i.changes)} "
                title += f"from {source} to {target}"
                number, url = source_forge.open_pull_request(
                    branch, base, title, pull_request_body(report)
                )
                report.pull_request, report.pull_request_url = number, url
    finally:
        if source_forge is not None:
            source_forge.close()
    return report


def pull_request_body(report: PromoteReport) -> str:
    """The evidence as promote read it, for reviewers: a claim, never evidence itself
    (apply reads the state again)."""
    lines = [
        f"Promotes what **{report.source}** has applied to **{report.target}** ({report.policy}).",
        "",
        f"| deployment | digest | applied in {report.source} | passing checks | changes |",
        "|---|---|---|---|---|",
    ]
    for i in report.items:
        if not i.changes:
            continue
        ev = i.evidence
        when = ev.applied_at.isoformat(timespec="seconds") if ev and ev.applied_at else "?"
        changes = "; ".join(f"{f}: `{old}` → `{new}`" for f, (old, new) in i.changes.items())
        lines.append(
            f"| {i.deployment} | `{i.digest}` | {when} | {ev.passed if ev else 0} | {changes} |"
        )
    lines += ["", f"Usage since applied ({report.target} now → {report.source}):", ""]
    for i in report.items:
        if i.changes:
            head, *rest = i.usage_lines(report.source, report.target)
            text = "; ".join(rest) if i.deltas else "; ".join([head, *rest])
            lines.append(f"- **{i.deployment}**: {text}")
    lines += [
        "",
        "Made by `reconciler promote`. Applying the merge judges the promotion again from the "
        "recorded state; this text is not evidence.",
    ]
    return "\n".join(lines) + "\n"


def _promote(
    session: Session,
    source: str,
    target: str,
    deployments: Sequence[str],
    branch: str | None,
    now: datetime | None,
) -> PromoteReport:
    loaded = session.load(session.repo.head())
    desired = loaded.desired
    for env in (source, target):
        if env not in desired.environments:
            raise ConfigError(f"unknown environment {env!r}")
    at = now or datetime.now(UTC)
    with session.open_store(read_only=True) as store:
        promo, evals, origin = _promotion_of(store, loaded, target, source)
        applied = {
            k.name: r
            for k, r in store.applied(source).items()
            if k.kind == "Deployment" and (not deployments or k.name in deployments)
        }
        missing = [d for d in deployments if d not in applied]
        if missing:
            raise ConfigError(f"not applied in {source!r}: {', '.join(missing)}")
        executions = session.open_executions(read_only=True)
        try:
            report = PromoteReport(source, target, origin)
            for name in sorted(applied):
                item = _item(loaded, store, executions, applied[name], target, (promo, evals), at)
                if item is not None:
                    report.items.append(item)
        finally:
            executions.close()
    if branch is not None:
        edits = {i.deployment: i for i in report.items if i.changes}
        if not edits:
            raise ConfigError(f"{target!r} already resolves to what {source!r} runs: no edit")
        if any(i.blocked for i in edits.values()):
            raise ConfigError("not eligible: no branch written (the reasons are above)")
        report.branch = branch
        report.commit = _write_branch(session, loaded, edits, source, target, branch)
    return report


def promotion_policy(
    store: StateStore, desired: Desired, target: str
) -> tuple[Promotion | None, Mapping[str, Any], str]:
    """The target's promotion block of record (its last applied run's policy) with the
    Evals it requires as recorded, else as declared, and which of the two it is."""
    last = store.last_applied_run(target)
    if last is not None and last.policy is not None:
        policy = Policy.from_document(last.policy, f"run {last.id}")
        spec, evals = policy.spec, policy.evals
        origin = f"policy of record: run {last.id}"
    else:
        spec, evals = desired.policy(target), required_evals(desired, target)
        origin = "declared policy (nothing recorded)"
    return spec.promotion, evals, origin


def _promotion_of(
    store: StateStore, loaded: Loaded, target: str, source: str
) -> tuple[Promotion, Mapping[str, Any], str]:
    """`promotion_policy`; a target with none from `source` is still held to a passing
    check."""
    promo, evals, origin = promotion_policy(store, loaded.desired, target)
    if promo is None or promo.source != source:
        default = Promotion.model_validate({"from": source})
        return default, {}, f"{origin}; no promotion from {source}: a passing check required"
    return promo, evals, origin


def judge_promotion(
    desired: Desired,
    store: StateStore,
    executions: ExecutionStore,
    record: AppliedRecord,
    target: str,
    target_provider: str,
    policy: tuple[Promotion, Mapping[str, Any]],
    now: datetime,
) -> tuple[str, Evidence | None, str | None]:
    """What the source's applied `record` runs (its evidence digest), the evidence the
    source holds for it, and why it may not go into `target` (None: eligible), by the
    gate's own rule (`not_eligible` over `evidence_for`). `promote` and the dashboard's
    matrix both ask here."""
    src_type = _type(desired, record.environment, record.provider)
    digest = applied_digest(desired, record)
    tgt_type = _type(desired, target, target_provider)
    if tgt_type != src_type:
        return (
            digest,
            None,
            (
                f"provider kinds differ ({src_type} in {record.environment}, {tgt_type} in "
                f"{target}): no manifest edit of model, prompt or options makes the digests equal"
            ),
        )
    ev = evidence_for(record.name, digest, record.environment, desired, store, executions)
    return digest, ev, not_eligible(ev, policy[0], policy[1], now)


def _item(
    loaded: Loaded,
    store: StateStore,
    executions: ExecutionStore,
    record: AppliedRecord,
    target: str,
    policy: tuple[Promotion, Mapping[str, Any]],
    now: datetime,
) -> Item | None:
    desired = loaded.desired
    name = record.name
    inst = desired.instances.get(target, {}).get(InstanceKey(target, "Deployment", name))
    if inst is None:
        return None  # not deployed to the target
    digest, ev, blocked = judge_promotion(
        desired, store, executions, record, target, inst.provider, policy, now
    )
    tgt = store.applied(target, [inst.key]).get(inst.key)
    tgt_digest = None if tgt is None else applied_digest(desired, tgt)
    item = Item(name, digest, tgt_digest, blocked=blocked, evidence=ev)
    item.source_usage = _usage_since(executions, record)
    item.target_usage = None if tgt is None else _usage_since(executions, tgt)
    for f in FIELDS:
        want, have = _value(record.spec, f), _value(inst.spec, f)
        if want != have:
            item.changes[f] = (have, want)
    return item


def _usage_since(executions: ExecutionStore, record: AppliedRecord) -> Usage | None:
    """The instance's executions since it was applied, as `reconciler metrics` counts
    them: an older spec's calls say nothing about this one."""
    found = executions.find(
        Query(
            environments=(record.environment,),
            deployments=(record.name,),
            since=record.applied_at,
            limit=None,
        )
    )
    rows = usage(found)
    return Usage.of(rows[0] if rows else None)


def applied_digest(desired: Desired, record: AppliedRecord) -> str:
    """The evidence digest of what `record` runs (its provider's kind as declared: a
    provider's type is part of its policy of record)."""
    return evidence_digest_of(record.spec, _type(desired, record.environment, record.provider))


def _type(desired: Desired, env: str, provider: str) -> str:
    config = desired.providers.get(env, {}).get(provider)
    return config.type if config else provider


def _value(spec: Mapping[str, Any], f: str) -> Any:
    """A field as a manifest writes it (`prompt: name@version`)."""
    value = spec.get(f)
    if f == "prompt" and isinstance(value, Mapping):
        return f"{value.get('name')}@{value.get('version')}"
    return value


# -- the edit ----------------------------------------------------------------------------


def edited_document(model: dict[str, Any], target: str, changes: Mapping[str, Any]) -> None:
    """Make the deployment resolve to `changes` in `target`, in place: an override of
    the target is dropped where the shared value is already what the source runs, and
    set only where it is not (the smallest edit)."""
    spec = model["spec"]
    overrides = spec.setdefault("overrides", {})
    mine = dict(overrides.get(target) or {})
    for f, want in changes.items():
        if spec.get(f) == want:
            mine.pop(f, None)
        else:
            mine[f] = want
    if mine:
        overrides[target] = mine
    else:
        overrides.pop(target, None)
    if not overrides:
        spec.pop("overrides")


def _write_branch(
    session: Session,
    loaded: Loaded,
    edits: Mapping[str, Item],
    source: str,
    target: str,
    branch: str,
) -> str:
    repo = session.repo
    if branch in [h.name for h in repo.repo.heads]:
        raise GitError(f"branch {branch!r} already exists")
    files: dict[str, str] = {}
    for name, item in edits.items():
        entry = loaded.desired.manifests.deployments[name]
        text = files.get(entry.path)
        if text is None:
            data = repo.read_file_at(loaded.commit, entry.path) or b""
            text = data.decode()
        model = entry.model.model_dump(mode="json", by_alias=True, exclude_unset=True)
        edited_document(model, target, {f: want for f, (_, want) in item.changes.items()})
        files[entry.path] = replace_document(text, entry.pos("metadata", "name").line, model)
    names = ", ".join(f"deployment.{n}" for n in edits)
    message = f"Promote {names} from {source} to {target}\n\n" + "\n".join(
        f"{n}: {item.digest} (applied in {source})" for n, item in edits.items()
    )
    with tempfile.TemporaryDirectory() as tmp:
        where = str(Path(tmp) / "wt")
        repo.repo.git.worktree("add", "--detach", where, loaded.commit or "HEAD")
        try:
            import git

            wt = git.Repo(where)
            for path, text in files.items():
                (Path(where) / path).write_text(text)
                wt.git.add(path)
            wt.git.commit("-q", "-m", message)
            sha = wt.head.commit.hexsha
            repo.repo.git.branch(branch, sha)
        finally:
            repo.repo.git.worktree("remove", "--force", where)
    return sha


def replace_document(text: str, line: int, model: dict[str, Any]) -> str:
    """`text` with the YAML document holding `line` (1-based) written anew from `model`;
    the file's other documents are kept byte for byte."""
    lines = text.splitlines(keepends=True)
    starts = [d.pos.line for d in load_documents(text.encode()) if d.data is not None]
    start = max(s for s in starts if s <= line)
    first = start - 1  # comments above the document's first key are kept
    end = first
    while end < len(lines) and not (end > first and lines[end].startswith("---")):
        end += 1
    body = yaml.safe_dump(model, sort_keys=False, default_flow_style=False, width=100)
    return "".join([*lines[:first], body, *lines[end:]])
