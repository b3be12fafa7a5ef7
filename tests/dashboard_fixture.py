"""A manifests repo with real history for the dashboard, built by running the CLI.

Three environments (dev → staging → production; production on a FakeDeployApi, the
others on the local registry), approvals from a `file` source kept outside the repo:

    C1  the example manifests (root)   applied everywhere (production: PR #1, alice+bob)
    C2  ticket-summarizer warmer        applied everywhere (production: PR #2, alice+carol)
    C3  rollback of C2                  applied to dev and staging (trigger rollback);
                                        production blocked: a direct push
    C4  support-chat support@1.2.0 in   applied to staging; production blocked again
        staging and production

Then staging drifts behind reconciler's back (a temperature and a secret env var edited
in the local registry), so the dashboard has a drifted and a blocked environment.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from conftest import EXAMPLE, commit_all, git, init_repo, run_cli
from fakes.deploy_api import FakeDeployApi

from reconciler.instances import Instance, ProviderConfig
from reconciler.providers.local import LocalProvider

SECRET = "vendor-secret-value-7f3a"
REGISTRY_TOKEN = "registry-token-5e1b"
#: What someone typed into the registry by hand: must never be shown either.
HAND_EDITED_SECRET = "hand-edited-secret-9c2d"
#: The forge the served pages link to (GITHUB_SERVER_URL).
FORGE = "https://github.example"
CHAT = "manifests/deployments/support-chat.yaml"
SUMMARIZER = "manifests/deployments/ticket-summarizer.yaml"


@dataclass
class DashboardRepo:
    repo: Path
    approvals: Path
    api: FakeDeployApi
    env: dict[str, str]
    commits: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, expect: int | None = 0) -> str:
        r = run_cli(["--repo", str(self.repo), *args], env=self.env)
        if expect is not None:
            assert r.code == expect, f"{args}: exit {r.code}\n{r.out}\n{r.err}"
        return r.out

    def history(self) -> list[dict[str, object]]:
        return list(json.loads(self.cli("history", "--json")))


def _pull_request(number: int, sha: str, approvers: list[str], title: str) -> dict[str, object]:
    return {
        "number": number,
        "state": "merged",
        "headSha": sha,
        "mergeCommitSha": sha,
        "author": "dave",
        "title": title,
        "baseRef": "main",
        "commits": [{"sha": sha, "author": "dave", "committer": "dave"}],
        "reviews": [{"user": u, "state": "APPROVED", "commitId": sha} for u in approvers],
    }


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def build(tmp: Path, api: FakeDeployApi) -> DashboardRepo:
    repo = init_repo(tmp / "repo")
    shutil.copytree(EXAMPLE, repo / "manifests")
    (repo / "manifests/deployments/hosted.yaml").unlink()  # vendor deployments: no stand-ins
    (repo / ".gitignore").write_text(".reconciler/\n")
    approvals = tmp / "approvals.json"  # outside the repo: a PR cannot change it
    d = DashboardRepo(
        repo,
        approvals,
        api,
        env={
            "RECONCILER_APPROVALS_FILE": str(approvals),
            "VENDOR_KEY": SECRET,
            "REGISTRY_TOKEN": REGISTRY_TOKEN,
            "RECONCILER_DEPLOY_BRANCH": "main",
        },
    )
    _replace(repo / "manifests/providers.yaml", "https://deploy.example.com", api.url)
    _replace(
        repo / "manifests/environments.yaml",
        '{deny: "0 17 * * FRI", duration: 64h, timezone: Europe/Berlin}',
        '{deny: "0 0 1 1 *", duration: 1h, timezone: Europe/Berlin}',
    )
    (repo / "reconciler.yaml").write_text("approvals: {source: file}\n")
    c1 = d.commits["C1"] = commit_all(repo, "Three environments on the example manifests")
    prs = [_pull_request(1, c1, ["alice", "bob"], "Example manifests")]
    approvals.write_text(json.dumps({"version": 1, "pullRequests": prs}))
    d.cli("apply")

    _replace(repo / SUMMARIZER, "temperature: 0,", "temperature: 0.3,")
    c2 = d.commits["C2"] = commit_all(repo, "ticket-summarizer: warmer summaries")
    prs.append(_pull_request(2, c2, ["alice", "carol"], "Warmer summaries"))
    approvals.write_text(json.dumps({"version": 1, "pullRequests": prs}))
    d.cli("apply")

    d.cli("rollback", c2)
    d.commits["C3"] = git(repo, "rev-parse", "HEAD")
    d.cli("apply", expect=3)  # production: the revert has no pull request

    _replace(repo / CHAT, "staging: {prompt: support@1.1.0}", "staging: {prompt: support@1.2.0}")
    _replace(repo / CHAT, "prompt: support@1.1.0, env:", "prompt: support@1.2.0, env:")
    d.commits["C4"] = commit_all(repo, "support-chat: support@1.2.0 to staging and production")
    d.cli("apply", expect=3)

    drift_staging(repo)
    return d


def drift_staging(repo: Path) -> None:
    """Edit two staging objects in the local registry, as someone at a console would."""
    local = LocalProvider(
        ProviderConfig(name="local", type="local", environment="staging"), repo_root=repo, env={}
    )
    try:
        for name, edit in (
            ("support-chat", {"options": {"temperature": 0.9, "maxTokens": 400}}),
            ("reranker", {"env": {"LOG_LEVEL": "info", "MAX_BATCH": "32", "VENDOR_KEY": ""}}),
        ):
            live = local.read("Deployment", name, "staging", None)
            assert live is not None
            body = {k: v for k, v in live.body.items() if k not in ("name", "environment")}
            labels = body.pop("labels", {})
            if name == "reranker":
                edit["env"]["VENDOR_KEY"] = HAND_EDITED_SECRET
            spec = {**body, **edit}
            inst = Instance("staging", "Deployment", name, "local", spec, labels=labels)
            local.update(inst, live.provider_id)
    finally:
        local.close()
