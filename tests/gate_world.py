"""A manifests repo wired to a GitHub-shaped forge and a deployment API on 127.0.0.1, for
the gate's attack tests: real git history (branches, merges, squashes, pushes), the CLI
as a real process, and the provider's request log to prove nothing was touched."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from conftest import Result, commit_all, copy_example, git, run_cli, squash_to_root
from fakes.deploy_api import FakeDeployApi
from fakes.forge import FakeGitHub

CHAT = "manifests/deployments/support-chat.yaml"
ENVS = "manifests/environments.yaml"
PROVIDERS = "manifests/providers.yaml"
HOSTED = "manifests/deployments/hosted.yaml"
API_TOKEN = "deploy-api-token-0123456789"

PRODUCTION = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: production}
spec:
  description: Customer-facing
  protected: true
  approvals:
    required: 2
    approvers: [alice, bob, carol, mallory, "@acme/ml-leads"]
    allowSelfApproval: false
    freshOnly: true
    byRisk: {critical: 3}
    rollback: {required: 1}
  allowOverride: true
"""

Edit = tuple[str, str, str]  # (path, old text, new text)
Merge = Literal["merge", "squash", "ff", "rebase"]


@dataclass
class PR:
    number: int
    head: str
    merged: str
    commits: list[str] = field(default_factory=list)


@dataclass
class World:
    repo: Path
    gh: FakeGitHub
    api: FakeDeployApi
    env: dict[str, str] = field(default_factory=dict)
    #: With the `file` approval source: its path (outside the repo) and document.
    approvals_file: Path | None = None
    approvals_doc: dict[str, Any] = field(default_factory=dict)

    # --- the CLI ---------------------------------------------------------------------

    def cli(self, *args: str, env: Mapping[str, str] | None = None) -> Result:
        full = {
            "GITHUB_TOKEN": self.gh.token,
            "GITHUB_API_URL": self.gh.url,
            "REGISTRY_TOKEN": API_TOKEN,
            "VENDOR_KEY": "vendor-key-value-0123",
            **self.env,
            **(env or {}),
        }
        r = run_cli(["--repo", str(self.repo), *args], env=full)
        both = r.out + r.err
        assert self.gh.token not in both and API_TOKEN not in both, "a token leaked"
        assert "Traceback" not in both and "internal error" not in both, both
        return r

    def apply_production(self, *args: str, env: Mapping[str, str] | None = None) -> Result:
        return self.cli("apply", "--env", "production", *args, env=env)

    def writes(self) -> list[tuple[str, str]]:
        """What the deployment API was asked to change (the attack's target)."""
        return [(r.method, r.path) for r in self.api.requests if r.method != "GET"]

    def forget_requests(self) -> None:
        self.api.requests.clear()

    # --- git history ---------------------------------------------------------------

    def edit(self, *edits: Edit) -> None:
        for rel, old, new in edits:
            f = self.repo / rel
            text = f.read_text()
            assert old in text, f"{old!r} not in {rel}"
            f.write_text(text.replace(old, new, 1))

    def commit(self, message: str, *edits: Edit, author: str | None = None) -> str:
        self.edit(*edits)
        if author is not None:
            git(self.repo, "add", "-A")
            git(
                self.repo, "commit", "-q", "-m", message,
                f"--author={author.title()} <{author}@example.com>",
            )  # fmt: skip
            return git(self.repo, "rev-parse", "HEAD")
        return commit_all(self.repo, message)

    def push(self, message: str, *edits: Edit) -> str:
        """A commit straight onto main, known to the forge with no pull request."""
        git(self.repo, "checkout", "-q", "main")
        sha = self.commit(message, *edits)
        self.gh.link_commit(sha)
        return sha

    def pr(
        self,
        number: int,
        *commits: Sequence[Edit] | Callable[[World], None],
        author: str = "dave",
        approve: Sequence[str] = ("alice", "bob"),
        merge: Merge = "merge",
        base: str = "main",
        register: bool = True,
    ) -> PR:
        """A branch of commits (each a list of edits), merged into `base` as `merge` says,
        registered with the forge with `author`'s commits and approvals of its head."""
        git(self.repo, "checkout", "-q", base)
        git(self.repo, "checkout", "-q", "-b", f"topic-{number}")
        shas = []
        for i, c in enumerate(commits):
            if callable(c):
                c(self)
                shas.append(commit_all(self.repo, f"change {number}.{i}"))
            else:
                shas.append(self.commit(f"change {number}.{i}", *c))
        head = shas[-1]
        git(self.repo, "checkout", "-q", base)
        if merge == "merge":
            git(self.repo, "merge", "-q", "--no-ff", "-m", f"Merge #{number}", f"topic-{number}")
        elif merge == "rebase":  # the forge copies the commits onto the base, one by one
            copies = []
            for sha in shas:
                git(self.repo, "cherry-pick", sha)
                copies.append(git(self.repo, "rev-parse", "HEAD"))
        elif merge == "squash":
            git(self.repo, "merge", "-q", "--squash", f"topic-{number}")
            git(self.repo, "commit", "-q", "-m", f"Change {number} (#{number})")
        else:
            git(self.repo, "merge", "-q", "--ff-only", f"topic-{number}")
        merged = git(self.repo, "rev-parse", "HEAD")
        if register and merge == "rebase":  # GitHub lists the pull request for each copy
            for copy in copies:
                self.gh.link_commit(copy, number)
        if register and self.approvals_file is not None:
            self.file_pr(number, author, head, merged, shas, approve, base)
        elif register:
            self.gh.add_pull_request(
                number, author=author, head_sha=head, merge_commit_sha=merged, base=base
            )
            for sha in shas:
                self.gh.add_commit(number, sha, author=author)
            for reviewer in approve:
                self.gh.add_review(number, reviewer, "APPROVED", commit_id=head)
        return PR(number, head, merged, shas)

    def adopt(self, sha: str, *, approve: Sequence[str], number: int = 100) -> None:
        """`sha`, already on main, as an approved pull request merged by fast-forward (the
        repository's setup went through review: an environment with nothing recorded has
        every commit behind it judged)."""
        if self.approvals_file is not None:
            self.file_pr(number, "dave", sha, sha, [sha], approve)
            return
        self.gh.adopt(sha, approve=approve, number=number)

    def file_pr(
        self,
        number: int,
        author: str,
        head: str,
        merged: str,
        shas: Sequence[str],
        approve: Sequence[str],
        base: str = "main",
        **extra: Any,
    ) -> dict[str, Any]:
        """The same facts as a GitHub PR, in the approvals file (docs/approvals-file.md)."""
        assert self.approvals_file is not None
        doc = self.approvals_doc
        doc.setdefault("version", 1)
        doc.setdefault("commits", {})[merged] = number
        pr: dict[str, Any] = {
            "number": number,
            "state": "merged",
            "headSha": head,
            "mergeCommitSha": merged,
            "baseRef": base,
            "author": author,
            "commits": [{"sha": s, "author": author, "committer": author} for s in shas],
            "reviews": [{"user": u, "state": "APPROVED", "commitId": head} for u in approve],
            **extra,
        }
        doc.setdefault("pullRequests", []).append(pr)
        self.save_approvals()
        return pr

    def save_approvals(self) -> None:
        assert self.approvals_file is not None
        self.approvals_file.write_text(json.dumps(self.approvals_doc, indent=1))

    def status(self, env: str = "production") -> dict[str, dict[str, object]]:
        r = self.cli("status", "--json", "--env", env)
        return {row["name"]: row for row in json.loads(r.out)}


def chat_tokens(old: int, new: int) -> Edit:
    return (CHAT, f"maxTokens: {old}", f"maxTokens: {new}")


def production_model(new: str, old: str = "gpt-4o") -> Edit:
    return (
        CHAT,
        f"production: {{provider: registry, model: {old},",
        f"production: {{provider: registry, model: {new},",
    )


@contextmanager
def world(
    tmp_path: Path,
    *,
    production: str = PRODUCTION,
    chat_risk: str = "medium",
    source: Literal["github", "file"] = "github",
    baseline: Sequence[str] = (),
    applied: bool = True,
) -> Iterator[World]:
    """The example repo, production on the deployment API and judged by `production`,
    with one approved change already applied everywhere (`apply *baseline`), so a policy
    of record exists; with `applied=False`, nothing applied yet."""
    with FakeGitHub() as gh, FakeDeployApi(token=API_TOKEN) as api:
        repo = copy_example(tmp_path / "repo")
        envs = repo / ENVS
        text = envs.read_text()
        envs.write_text(
            text[
                : text.index(
                    "apiVersion: reconciler/v1\nkind: Environment\nmetadata: {name: production}"
                )
            ]
            + production
        )
        providers = repo / PROVIDERS
        providers.write_text(
            providers.read_text().replace(
                'baseUrl: "https://deploy.example.com"', f'baseUrl: "{api.url}"'
            )
        )
        chat = repo / CHAT
        chat.write_text(chat.read_text().replace("risk: medium", f"risk: {chat_risk}"))
        (repo / HOSTED).unlink()  # production's vendor deployments: no stand-ins here
        config = {
            "github": "approvals: {source: github, repository: acme/manifests}\n",
            "file": "approvals: {source: file}\n",
        }[source]
        (repo / "reconciler.yaml").write_text(config)
        setup = squash_to_root(repo, "test setup")
        w = World(repo, gh, api)
        if source == "file":
            w.approvals_file = tmp_path / "approvals.json"  # outside the repo
            w.env["RECONCILER_APPROVALS_FILE"] = str(w.approvals_file)
        w.adopt(setup, approve=("alice", "bob", "carol"))
        if applied:
            approvers = ("alice", "bob", "carol") if chat_risk == "critical" else ("alice", "bob")
            w.pr(1, [chat_tokens(400, 401)], approve=approvers)
            r = w.cli("apply", *baseline)
            assert r.code == 0, r.out + r.err
            assert api.get("deployments", "production", "support-chat") is not None
            w.forget_requests()
        yield w
