"""The facts the gate judges by, gathered once per environment: the only part of the gate
that reads git, the state and the forge (`judge.py` decides over what this returns).

What it may read is fixed by the trust model (docs/design.md, "The gate"): the recorded
state, the deploy branch's history, the forge's answers, and the operator's settings;
the change under judgement only as the thing judged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from functools import cached_property

from reconciler.approvals import ApprovalSource
from reconciler.approvals.facts import PullRequestFacts
from reconciler.approvals.policy import split_approver
from reconciler.config import ApprovalsConfig, Settings
from reconciler.errors import GitError, ReconcilerError
from reconciler.gate.evidence import gather_evidence
from reconciler.gate.history import History
from reconciler.gate.judge import (
    Candidate,
    Claim,
    CommitFacts,
    Evidence,
    Facts,
    Mode,
    PolicyStep,
    SourceKey,
    source_key,
)
from reconciler.gitrepo import ManifestRepo
from reconciler.load import Loaded
from reconciler.plan import EnvironmentPlan, make_plan
from reconciler.policy import Policy, policy_at
from reconciler.redaction import Register, to_backstop
from reconciler.runs.store import open_executions
from reconciler.state.base import StateStore
from reconciler.vocabulary import Risk, as_risk, highest_risk

#: The approval source for an approval configuration (None: `source: none`).
SourceFor = Callable[[ApprovalsConfig], ApprovalSource | None]
DEPLOY_BRANCH_VAR = "RECONCILER_DEPLOY_BRANCH"
OPERATOR_SOURCE_VAR = "RECONCILER_APPROVALS_SOURCE"
OPERATOR_REPOSITORY_VAR = "RECONCILER_APPROVALS_REPOSITORY"


class FactsBuilder:
    """Reads what one command's gate needs; forge answers and past commits are cached
    across its environments."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: StateStore,
        target: Loaded,
        source_for: SourceFor,
        now: datetime,
        mode: Mode = "apply",
        pull_request: int | None = None,
        reverts_exactly: bool = False,
        override_window: bool = False,
        secret_env: Mapping[str, str] | None = None,
        repo: ManifestRepo | None = None,
        register: Register = to_backstop,
    ) -> None:
        self.settings = settings
        self.store = store
        self.target = target
        self.mode: Mode = mode
        self.hint = pull_request
        self.now = now
        self.reverts_exactly = reverts_exactly
        self.override_window = override_window
        self.secret_env = dict(secret_env or {})
        self.repo = repo if repo is not None else ManifestRepo(settings.repo)
        self.history = History(settings, self.repo, register)
        self.history.remember(target)
        self._source_for = source_for
        self._sources: dict[SourceKey, ApprovalSource | None] = {}
        self._pulls: dict[tuple[SourceKey, int], PullRequestFacts] = {}
        self._listed: dict[tuple[SourceKey, str], list[int]] = {}
        self._branches: dict[SourceKey, str] = {}
        self._members: dict[tuple[SourceKey, str, str, str], str] = {}
        self._steps: dict[tuple[str, str], list[tuple[str, Policy | None]]] = {}
        self._tip: dict[str, str | None] = {}

    @property
    def commit(self) -> str | None:
        """The commit judged (None: the working tree outside git, or `watch --apply`)."""
        return None if self.mode == "working_tree" or self.target.dirty else self.target.commit

    def close(self) -> None:
        for source in self._sources.values():
            if source is not None:
                source.close()

    def gather(self, plan: EnvironmentPlan, *, windows: bool) -> Facts:
        env = plan.environment
        new = policy_at(self.target.desired, self.target.approvals, env, "the change itself")
        try:
            return self._gather(plan, new, windows=windows)
        except ReconcilerError as e:
            return Facts(env, self.mode, self.commit, new, None, problem=e.message)

    def _gather(self, plan: EnvironmentPlan, new: Policy, *, windows: bool) -> Facts:
        env = plan.environment
        last = self.store.last_applied_run(env)
        recorded = None
        if last is not None and last.policy is not None:
            at = f" (commit {last.commit[:12]})" if last.commit else ""
            recorded = Policy.from_document(last.policy, f"run {last.id}{at}")
        steps: list[tuple[str, Policy | None]] = []
        before = self._before_the_change
        if recorded is None and before is not None:
            steps = self._policy_steps(before, env)
        trusted = [recorded] if recorded else [p for _, p in steps if p is not None]
        claims = self._claims(env, new, recorded)
        base = last.commit if last is not None else None
        commit = self.commit
        descends = base is None or commit is None or base == commit
        descends = descends or self.repo.is_ancestor(base or "", commit or "")
        facts = Facts(
            environment=env,
            mode=self.mode,
            commit=commit,
            new=new,
            recorded=recorded,
            base=base,
            base_descends=descends,
            plan_risk=risk_of(plan),
            rollback=self._is_rollback(plan),
            now=self.now if windows else None,
            override_window=self.override_window,
            claims=tuple(claims),
            evidence=tuple(self._evidence(plan, new, recorded)),
            evidence_at=self.now,
        )
        judged_by = [*(trusted or [new]), new, *(c.policy for c in claims)]
        if commit is None or not any(p.needs_approvals() for p in judged_by):
            return _with_history(facts, steps, {})
        keys = {source_key(p.approvals): p.approvals for p in (trusted or [new])}
        operator = self._operator_source()
        if operator is not None:
            keys = {source_key(operator): operator}
            facts = replace(facts, operator_source=source_key(operator))
        sources = {k: s for k, a in keys.items() if (s := self._source(a)) is not None}
        relevant = self._relevant(env, base, commit) if descends else []
        shas = [*relevant, *(sha for sha, _ in steps)]
        commits = {sha: self._commit_facts(sha, sources) for sha in dict.fromkeys(shas)}
        pulls = [c.facts for cf in commits.values() for cs in cf.candidates.values() for c in cs]
        return replace(
            facts,
            history=tuple(PolicyStep(commits[sha], p) for sha, p in steps),
            relevant=tuple(commits[sha] for sha in relevant),
            deploy_branch={k: self._deploy_branch(k, s) for k, s in sources.items()},
            sources=frozenset(sources),
            membership={k: self._membership(k, s, judged_by, pulls) for k, s in sources.items()},
        )

    # -- git and state ---------------------------------------------------------------

    def _evidence(
        self, plan: EnvironmentPlan, new: Policy, recorded: Policy | None
    ) -> list[Evidence]:
        """For each promotion source a policy names, what it holds for each deployment
        the plan creates or changes (`gather_evidence`)."""
        sources = {
            p.spec.promotion.source
            for p in (new, recorded)
            if p is not None and p.spec.promotion is not None
        }
        if not sources:
            return []
        executions = open_executions(
            self.settings.state_url,
            repo_root=self.settings.repo,
            env=self.settings.env,
            read_only=True,
        )
        try:
            return gather_evidence(plan, self.target.desired, self.store, executions, sources)
        finally:
            executions.close()

    @cached_property
    def _before_the_change(self) -> str | None:
        """Where the deploy branch stood before the change: the target's first parent
        when it is on the deploy branch, else (a pull request's head, a commit of another
        branch or of an unrelated history) the merge base with it, or with no common
        history the deploy branch's tip: a commit's own history is never where its
        policy of record comes from unless the deploy branch holds it."""
        commit = self.target.commit
        if commit is None:
            return None
        tip = self._deploy_tip()
        if tip is None:
            return self.repo.first_parent(commit)
        if self.mode != "preview" and (tip == commit or self.repo.is_ancestor(commit, tip)):
            return self.repo.first_parent(commit)
        base = self.repo.merge_base(commit, tip)
        if base is not None and base != commit:
            return base
        return tip if base is None else self.repo.first_parent(commit)

    def _deploy_tip(self) -> str | None:
        """The deploy branch's newest commit in this clone (RECONCILER_DEPLOY_BRANCH, else
        origin/HEAD, main or master), or None when none is found."""
        if "tip" not in self._tip:
            branch = self.settings.env.get(DEPLOY_BRANCH_VAR)
            names = [f"origin/{branch}", branch] if branch else ["origin/HEAD", "main", "master"]
            found = None
            for ref in names:
                try:
                    found = self.repo.resolve(ref)
                    break
                except GitError:
                    continue
            self._tip["tip"] = found
        return self._tip["tip"]

    def _operator_source(self) -> ApprovalsConfig | None:
        """RECONCILER_APPROVALS_SOURCE (and _REPOSITORY): where the operator, outside the
        repo, says approvals come from; the only way out for a policy of record that
        names none, since a change can never bring its own source."""
        source = self.settings.env.get(OPERATOR_SOURCE_VAR)
        if not source:
            return None
        repository = self.settings.env.get(OPERATOR_REPOSITORY_VAR) or None
        try:
            return ApprovalsConfig.model_validate({"source": source, "repository": repository})
        except ValueError as e:
            raise ReconcilerError(f"{OPERATOR_SOURCE_VAR}: {e}") from None

    def _policy_steps(self, before: str, env: str) -> list[tuple[str, Policy | None]]:
        if (before, env) not in self._steps:
            self._steps[(before, env)] = self.history.policy_steps(before, env)
        return self._steps[(before, env)]

    def _relevant(self, env: str, base: str | None, commit: str) -> list[str]:
        """The commits whose changes reach `env`: since the recorded state, or with
        nothing recorded every commit since the environment was last declared (just the
        commit itself when no commit changes it: then what changes comes from outside
        git, like a rotated secret, and is judged as that commit's)."""
        if base is None:
            base = self._declared_since(env, commit)
        between = (
            self.repo.commits_between(base, commit)
            if base is not None
            else self.repo.ancestry(commit)
        )
        changing = [sha for sha in between if self.history.changes(sha, env)]
        return changing or [commit]

    def _declared_since(self, env: str, commit: str) -> str | None:
        """The parent of the commit that last declared `env` on the deploy branch's
        first-parent history (None: declared by the root commit), or where the branch
        stood before the change when the change declares it. With nothing recorded the
        environment starts empty there, and every commit from its declaration on
        reaches it."""
        before = self._before_the_change
        if before is None:
            return None
        steps = self._policy_steps(before, env)
        created = None
        for i, (sha, after) in enumerate(steps):
            if after is not None and (i == 0 or steps[i - 1][1] is None):
                created = sha
        if steps and steps[-1][1] is None:
            created = None  # removed since: declared anew by the change
        if created is None:
            return before
        return self.repo.first_parent(created)

    def _claims(self, env: str, new: Policy, recorded: Policy | None) -> list[Claim]:
        """Other environments whose policy of record reads a variable this change makes
        `env` read where it did not before, or sends somewhere new (its providers or
        variables changed): granting or moving it is theirs to approve too."""
        if (
            recorded is not None
            and recorded.complete
            and recorded.providers == new.providers
            and set(recorded.variables) == set(new.variables)
        ):
            return []
        out: list[Claim] = []
        before = self._before_the_change
        for other in self.store.environments():
            if other == env:
                continue
            last = self.store.last_applied_run(other)
            if last is None:
                continue  # holds no object: nothing of it to take (see docs/design.md)
            if last.policy is not None:
                theirs = [Policy.from_document(last.policy, f"run {last.id}")]
            elif before is not None:  # recorded by a version without policies: replayed
                theirs = [p for _, p in self._policy_steps(before, other) if p is not None]
            else:
                theirs = []
            for policy in theirs:
                shared = sorted(set(policy.variables) & set(new.variables))
                if shared and policy.needs_approvals():
                    named = f"environment {other}'s policy of record ({policy.origin})"
                    out.append(Claim(shared[0], other, _named(policy, named, shared)))
                    break
        return out

    def _is_rollback(self, plan: EnvironmentPlan) -> bool:
        """A rollback (recorded as one, and judged by the lighter rollback policy) only
        when the commit exactly reverts earlier ones *and* the recorded state is the
        desired state just before it: the whole plan is the inverse of the reverted
        commits, and nothing rides along."""
        if not self.reverts_exactly or self.commit is None:
            return False
        parent = self.repo.first_parent(self.commit)
        if parent is None:
            return False
        before = self.history.snapshot(parent).loaded
        if before is None or plan.environment not in before.desired.environments:
            return False
        again = make_plan(
            before.desired,
            self.store,
            commit=parent,
            environments=[plan.environment],
            secret_env=self.secret_env,
        )
        return not again.environments[0].changes

    def _applies(self, result: str) -> bool:
        """Whether a merge result is part of what is applied: an ancestor of (or) the
        target, or a commit with exactly the target's tree."""
        target = self.commit or ""
        if self.repo.is_ancestor(result, target):
            return True
        try:
            return self.repo.tree(result) == self.repo.tree(target)
        except GitError:  # a commit this clone does not have: not what is applied
            return False

    def _on_rebase_chain(self, sha: str, pr: PullRequestFacts) -> bool:
        result = pr.merge_commit_sha or pr.head_sha
        try:
            if self.repo.parent_count(result) != 1:
                return False  # a merge commit never covers what sits below it
            return sha in self.repo.first_parent_chain(result, len(pr.commits))
        except GitError:
            return False

    # -- the forge -------------------------------------------------------------------

    def _source(self, approvals: ApprovalsConfig) -> ApprovalSource | None:
        key = (approvals.source, approvals.repository)
        if key not in self._sources:
            self._sources[key] = self._source_for(approvals)
        return self._sources[key]

    def _commit_facts(self, sha: str, sources: Mapping[SourceKey, ApprovalSource]) -> CommitFacts:
        found: dict[SourceKey, tuple[Candidate, ...]] = {}
        for key, source in sources.items():
            if (key, sha) not in self._listed:
                self._listed[(key, sha)] = source.pull_requests_for_commit(sha)
            listed = self._listed[(key, sha)]
            numbers = [*([self.hint] if self.hint is not None else []), *listed]
            cands = []
            for number in dict.fromkeys(numbers):
                pr = self._pull(key, source, number)
                result = pr.merge_commit_sha or pr.head_sha
                cands.append(
                    Candidate(
                        number,
                        pr,
                        listed=number in listed,
                        result_applied=pr.merged and self._applies(result),
                        on_rebase_chain=pr.merged and self._on_rebase_chain(sha, pr),
                    )
                )
            found[key] = tuple(cands)
        return CommitFacts(sha, found)

    def _pull(self, key: SourceKey, source: ApprovalSource, number: int) -> PullRequestFacts:
        if (key, number) not in self._pulls:
            self._pulls[(key, number)] = source.pull_request(number)
        return self._pulls[(key, number)]

    def _deploy_branch(self, key: SourceKey, source: ApprovalSource) -> str:
        branch = self.settings.env.get(DEPLOY_BRANCH_VAR)
        if branch:
            return branch
        if key not in self._branches:
            self._branches[key] = source.default_branch()
        return self._branches[key]

    def _membership(
        self,
        key: SourceKey,
        source: ApprovalSource,
        policies: Iterable[Policy],
        pulls: Iterable[PullRequestFacts],
    ) -> dict[tuple[str, str, str], str]:
        """The team answers the judge may ask for, as a table: each reviewer not listed
        by name, against each team a policy names."""
        lists = [
            p.spec.approvals.approvers_for(is_rollback=r) for p in policies for r in (False, True)
        ]
        teams = {(org, team) for ls in lists for org, team in map(split_approver, ls) if team}
        named = {login.casefold() for ls in lists for login, t in map(split_approver, ls) if not t}
        users = {r.user for pr in pulls for r in pr.reviews if r.user.casefold() not in named}
        table: dict[tuple[str, str, str], str] = {}
        for org, team in sorted(teams):
            for user in sorted(users):
                k = (key, org, team, user)
                if k not in self._members:
                    self._members[k] = source.membership(org, team, user)
                table[(org, team, user)] = self._members[k]
        return table


def _with_history(
    facts: Facts, steps: list[tuple[str, Policy | None]], commits: Mapping[str, CommitFacts]
) -> Facts:
    history = tuple(PolicyStep(commits.get(sha, CommitFacts(sha)), p) for sha, p in steps)
    return replace(facts, history=history)


def _named(policy: Policy, origin: str, variables: list[str]) -> Policy:
    return replace(policy, origin=f"{origin} (it reads {', '.join(variables)})")


def risk_of(plan: EnvironmentPlan) -> Risk:
    """The highest of each change's new and recorded risk (lowering a deployment's risk
    in the change under judgement lowers nothing)."""
    risks: list[str] = []
    for ch in plan.changes:
        risks.append(ch.risk)
        if ch.before is not None and "risk" in ch.before:
            risks.append(as_risk(ch.before["risk"]))
    return highest_risk(risks)
