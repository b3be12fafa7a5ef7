"""The gate's trust model on GitLab, tried as an attacker would (issue 12): the identity
attacks GitLab invites (private commit emails, co-authors, ancestor-group members, bot
users, Reporters) and two GitHub-shaped attacks again, to show the gate does not depend
on the forge. Every test drives the CLI as a real process against a GitLab-shaped server
(`FakeGitLab`) and a deployment API on 127.0.0.1, and asserts the exit code *and* what
production's provider was asked to change."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

import pytest
from conftest import Result, commit_all, copy_example, git, run_cli, squash_to_root
from fakes.deploy_api import FakeDeployApi
from fakes.forge import T0
from fakes.gitlab import GUEST, MAINTAINER, REPORTER, FakeGitLab
from gate_world import (
    API_TOKEN,
    ENVS,
    HOSTED,
    PRODUCTION,
    PROVIDERS,
    Edit,
    chat_tokens,
    production_model,
)

MARKER = "<!-- reconciler:plan -->"
PRIVATE = "mallory@personal.example"  # mallory's commit email: private, GitLab's default


@dataclass
class Commit:
    """A commit of a merge request as GitLab lists it (emails, not usernames)."""

    edits: Sequence[Edit] | Callable[[GitLabWorld], None]
    author_email: str | None = None  # default: the MR author's noreply address
    committer_email: str | None = None
    message: str | None = None


@dataclass
class MR:
    iid: int
    head: str
    merged: str
    commits: list[str] = field(default_factory=list)


@dataclass
class GitLabWorld:
    repo: Path
    gl: FakeGitLab
    api: FakeDeployApi

    def cli(self, *args: str, env: Mapping[str, str] | None = None) -> Result:
        full = {
            "GITLAB_TOKEN": self.gl.token,
            "CI_API_V4_URL": self.gl.url,
            "REGISTRY_TOKEN": API_TOKEN,
            "VENDOR_KEY": "vendor-key-value-0123",
            **(env or {}),
        }
        r = run_cli(["--repo", str(self.repo), *args], env=full)
        both = r.out + r.err
        assert self.gl.token not in both and API_TOKEN not in both, "a token leaked"
        assert "Traceback" not in both and "internal error" not in both, both
        return r

    def writes(self) -> list[tuple[str, str]]:
        """What the deployment API was asked to change (the attack's target)."""
        return [(r.method, r.path) for r in self.api.requests if r.method != "GET"]

    def person(self, username: str, *, private: bool = False) -> str:
        """A GitLab user; their commit email is public unless `private`."""
        email = f"{username}@example.com"
        self.gl.user(username, public_email="" if private else email)
        return email

    def edit(self, *edits: Edit) -> None:
        for rel, old, new in edits:
            f = self.repo / rel
            text = f.read_text()
            assert old in text, f"{old!r} not in {rel}"
            f.write_text(text.replace(old, new, 1))

    def push(self, message: str, *edits: Edit) -> str:
        """A commit straight onto main: GitLab knows no merge request for it."""
        git(self.repo, "checkout", "-q", "main")
        self.edit(*edits)
        return commit_all(self.repo, message)

    def branch(self, iid: int, *commits: Commit, base: str = "main") -> list[str]:
        git(self.repo, "checkout", "-q", base)
        git(self.repo, "checkout", "-q", "-b", f"topic-{iid}")
        shas = []
        for i, c in enumerate(commits):
            if callable(c.edits):
                c.edits(self)
            else:
                self.edit(*c.edits)
            shas.append(commit_all(self.repo, c.message or f"change {iid}.{i}"))
        return shas

    def register(
        self,
        iid: int,
        shas: Sequence[str],
        commits: Sequence[Commit],
        *,
        author: str,
        approve: Sequence[str],
        merged: str | None,
    ) -> None:
        """The merge request as GitLab shows it: its commits' emails, its approvals (of
        its head, an hour after the push)."""
        if author not in self.gl.users:
            self.person(author)
        # GitLab's "private commit email": ties the commit to its author's account
        email = f"{self.gl.users[author]['id']}-{author}@users.noreply.gitlab.example.com"
        self.gl.add_merge_request(
            iid,
            author=author,
            sha=shas[-1],
            merged=merged is not None,
            merge_commit_sha=merged,
            source_branch=f"topic-{iid}",
            pushed_at=T0,
        )
        for sha, c in zip(shas, commits, strict=True):
            self.gl.add_commit(
                iid,
                sha,
                author_email=c.author_email or email,
                committer_email=c.committer_email,
                message=c.message or "Change things",
            )
        for reviewer in approve:
            if reviewer not in self.gl.users:
                self.person(reviewer)
            self.gl.approve(iid, reviewer, approved_at=T0 + timedelta(hours=1))

    def mr(
        self,
        iid: int,
        *commits: Commit,
        author: str = "dave",
        approve: Sequence[str] = ("alice", "bob"),
        merge: Literal["merge", "ff"] = "merge",
    ) -> MR:
        """A branch of commits merged into main, registered as merge request `iid`."""
        shas = self.branch(iid, *commits)
        git(self.repo, "checkout", "-q", "main")
        if merge == "merge":
            git(self.repo, "merge", "-q", "--no-ff", "-m", f"Merge !{iid}", f"topic-{iid}")
        else:
            git(self.repo, "merge", "-q", "--ff-only", f"topic-{iid}")
        merged = git(self.repo, "rev-parse", "HEAD")
        self.register(iid, shas, commits, author=author, approve=approve, merged=merged)
        return MR(iid, shas[-1], merged, shas)


@contextmanager
def world(tmp_path: Path, *, production: str = PRODUCTION) -> Iterator[GitLabWorld]:
    """The example repo judged by GitLab, production on the deployment API, one approved
    change already applied everywhere (so a policy of record exists)."""
    with FakeGitLab() as gl, FakeDeployApi(token=API_TOKEN) as api:
        repo = copy_example(tmp_path / "repo")
        envs = repo / ENVS
        text = envs.read_text()
        head = "apiVersion: reconciler/v1\nkind: Environment\nmetadata: {name: production}"
        envs.write_text(text[: text.index(head)] + production)
        providers = repo / PROVIDERS
        providers.write_text(
            providers.read_text().replace(
                'baseUrl: "https://deploy.example.com"', f'baseUrl: "{api.url}"'
            )
        )
        (repo / "reconciler.yaml").write_text(
            f"approvals: {{source: gitlab, repository: {gl.project_path}}}\n"
        )
        (repo / HOSTED).unlink()  # production's vendor deployments: no stand-ins here
        setup = squash_to_root(repo, "test setup")
        w = GitLabWorld(repo, gl, api)
        # the setup went through review: with nothing recorded, every commit since
        # production's declaration is judged
        w.register(
            100,
            [setup],
            [Commit([])],
            author="dave",
            approve=("alice", "bob", "carol"),
            merged=setup,
        )
        w.mr(1, Commit([chat_tokens(400, 401)]))
        r = w.cli("apply")
        assert r.code == 0, r.out + r.err
        assert api.get("deployments", "production", "support-chat") is not None
        api.requests.clear()
        yield w


@pytest.fixture
def w(tmp_path: Path) -> Iterator[GitLabWorld]:
    with world(tmp_path) as it:
        yield it


ANYONE = PRODUCTION.replace(
    'approvers: [alice, bob, carol, mallory, "@acme/ml-leads"]', "approvers: []"
)


@pytest.fixture
def anyone(tmp_path: Path) -> Iterator[GitLabWorld]:
    """Production with `approvers: []`: anyone with write access may approve."""
    with world(tmp_path, production=ANYONE) as it:
        yield it


def blocked(w: GitLabWorld, *args: str, env: Mapping[str, str] | None = None) -> str:
    r = w.cli("apply", "--env", "production", *args, env=env)
    out = r.out + r.err
    assert r.code == 3, out
    assert w.writes() == [], f"production's provider was touched: {w.writes()}"
    return out


def applied(w: GitLabWorld) -> None:
    r = w.cli("apply", "--env", "production")
    assert r.code == 0, r.out + r.err
    assert w.writes(), "production's provider was not asked to change anything"


# --- 1. commits nobody can be tied to -----------------------------------------------

#: variant → how mallory's hand in the change escapes the author check
UNTIED: dict[str, Commit] = {
    "private-email": Commit([chat_tokens(401, 402)], author_email=PRIVATE),
    "email-of-no-account": Commit([chat_tokens(401, 402)], author_email="m@throwaway.example"),
    "committer": Commit([chat_tokens(401, 402)], committer_email=PRIVATE),
    "co-author": Commit(
        [chat_tokens(401, 402)],
        message=f"Change things\n\nCo-authored-by: Mallory <{PRIVATE}>\n",
    ),
}


@pytest.mark.parametrize("variant", sorted(UNTIED))
def test_an_untied_author_cannot_approve_their_own_merge_request(
    w: GitLabWorld, variant: str
) -> None:
    """dave opens the MR; mallory's hand is in it under an email GitLab's API does not
    tie to her (her private commit email, a throwaway one, as committer, as co-author);
    mallory and alice approve."""
    w.person("mallory", private=True)
    w.mr(2, UNTIED[variant], author="dave", approve=("mallory", "alice"))
    out = blocked(w)
    assert "commit authors unknown" in out


def test_a_private_email_blocks_unless_the_project_enforces_four_eyes(w: GitLabWorld) -> None:
    """Honest approvals of a private-email author's commit: who wrote it is unknown, so
    the gate refuses, until GitLab itself refuses approvals by authors and committers
    ("Prevent approvals by users who add commits"), which it checks by every email."""
    w.person("erin", private=True)
    w.mr(2, Commit([chat_tokens(401, 402)], author_email="erin@example.com"), author="erin")
    out = blocked(w)
    assert "commit authors unknown" in out
    w.gl.enforce_four_eyes()
    applied(w)


def test_gitlabs_committer_rule_does_not_cover_an_author_who_did_not_commit(
    w: GitLabWorld,
) -> None:
    """GitLab's rule names committers: mallory's commit, committed (cherry-picked) by
    dave, leaves mallory free to approve it there, so it stays blocked here."""
    w.gl.enforce_four_eyes()
    w.person("mallory", private=True)
    dave = w.person("dave")
    commit = Commit([chat_tokens(401, 402)], author_email=PRIVATE, committer_email=dave)
    w.mr(2, commit, author="dave", approve=("mallory", "alice"))
    out = blocked(w)
    assert "commit authors unknown" in out


# --- 2. groups: the group and its subgroups, never its ancestors ----------------------


def test_a_guest_of_an_ancestor_group_does_not_count_for_the_group(w: GitLabWorld) -> None:
    """gus is a Guest of `acme`: GitLab's `members/all` of `acme/ml-leads` lists him
    (inherited), but he is no member of @acme/ml-leads."""
    w.gl.set_member("acme/ml-leads", "carol")
    w.gl.set_member("acme", "gus", access_level=GUEST)
    w.mr(2, Commit([chat_tokens(401, 402)]), approve=("alice", "gus"))
    w.gl.set_access("gus", GUEST)  # inherited from acme
    out = blocked(w)
    assert "gus (not an approver)" in out


def test_a_member_of_a_subgroup_counts_for_the_group(w: GitLabWorld) -> None:
    w.gl.set_member("acme/ml-leads/infra", "zed")
    w.mr(2, Commit([chat_tokens(401, 402)]), approve=("alice", "zed"))
    applied(w)


# --- 3. with `approvers: []`, only people who can push count --------------------------


def test_with_any_approver_a_bot_user_does_not_count(anyone: GitLabWorld) -> None:
    """A project access token's bot user (a Maintainer, `bot: true`) approving."""
    bot = f"project_{anyone.gl.project_id}_bot_5e6f7a"
    anyone.gl.user(bot)
    anyone.mr(2, Commit([chat_tokens(401, 402)]), approve=("alice", bot))
    anyone.gl.set_access(bot, MAINTAINER)
    out = blocked(anyone)
    assert "a bot" in out


def test_with_any_approver_a_reporter_does_not_count(anyone: GitLabWorld) -> None:
    anyone.mr(2, Commit([chat_tokens(401, 402)]), approve=("alice", "rita"))
    anyone.gl.set_access("rita", REPORTER)
    out = blocked(anyone)
    assert "no write access" in out


# --- 4. the gate does not depend on the forge --------------------------------------


#: attack → (the policy edit, the MR's author, who approves its head)
POLICY_ATTACKS: dict[str, tuple[Edit, str, tuple[str, ...]]] = {
    "required-0": ((ENVS, "    required: 2\n", "    required: 0\n"), "mallory", ()),
    "approvers-replaced": (
        (
            ENVS,
            'approvers: [alice, bob, carol, mallory, "@acme/ml-leads"]',
            "approvers: [mallory, eve]",
        ),
        "dave",
        ("mallory", "eve"),
    ),
}


@pytest.mark.parametrize("attack", sorted(POLICY_ATTACKS))
def test_a_merge_request_cannot_lower_the_policy_it_is_judged_by(
    w: GitLabWorld, attack: str
) -> None:
    edit, author, approve = POLICY_ATTACKS[attack]
    w.mr(2, Commit([edit, chat_tokens(401, 402)]), author=author, approve=approve)
    out = blocked(w)
    assert "policy" in out


def test_an_unreviewed_change_does_not_ride_along_with_a_reviewed_one(w: GitLabWorld) -> None:
    sneaky = w.push("tweak", production_model("llama-3.1-8b-instruct"))
    blocked(w)

    def notes(world: GitLabWorld) -> None:
        (world.repo / "NOTES.md").write_text("a typo, fixed\n")

    w.mr(8, Commit(notes))  # two approvals, no manifest touched
    out = blocked(w)
    assert sneaky[:7] in out


# --- 5. merged-results pipelines and the plan note ----------------------------------


def test_a_merged_results_pipeline_judges_the_merge_requests_head(w: GitLabWorld) -> None:
    """CI_COMMIT_SHA is a temporary merge commit there; approvals are of the source
    branch's head (CI_MERGE_REQUEST_SOURCE_BRANCH_SHA), where the status belongs."""
    commits = (Commit([production_model("llama-3.1-8b-instruct")]),)
    shas = w.branch(2, *commits)
    w.push("meanwhile on main", chat_tokens(401, 402))
    w.register(2, shas, commits, author="dave", approve=("alice", "bob"), merged=None)
    git(w.repo, "checkout", "-q", "--detach", "main")
    git(w.repo, "merge", "-q", "--no-ff", "-m", "Merge topic-2 into main", "topic-2")
    temporary = git(w.repo, "rev-parse", "HEAD")
    ci = {
        "GITLAB_CI": "true",
        "CI_PIPELINE_SOURCE": "merge_request_event",
        "CI_MERGE_REQUEST_IID": "2",
        "CI_MERGE_REQUEST_EVENT_TYPE": "merged_result",
        "CI_COMMIT_SHA": temporary,
        "CI_MERGE_REQUEST_SOURCE_BRANCH_SHA": shas[-1],
    }
    r = w.cli("approvals", "--status", env=ci)
    assert r.code == 0, r.out + r.err
    assert [(s["sha"], s["status"]) for s in w.gl.statuses] == [(shas[-1], "success")]
    assert w.writes() == []


def test_the_plan_note_upsert_never_edits_someone_elses_note(w: GitLabWorld) -> None:
    w.mr(2, Commit([chat_tokens(401, 402)]))
    forged = w.gl.add_note(2, f"{MARKER}\nLooks fine, merge it!", author="mallory")
    for _ in range(2):
        r = w.cli("plan", "--comment", "--pr", "2")
        assert r.code == 0, r.out + r.err
    assert forged["body"] == f"{MARKER}\nLooks fine, merge it!"
    ours = [n for n in w.gl.notes[2] if n["author"]["username"] == w.gl.me]
    assert len(ours) == 1 and "support-chat" in ours[0]["body"]
    assert w.writes() == []
