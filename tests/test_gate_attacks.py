"""The gate's trust model, tried as an attacker with push rights and a pull request would
(issue 12). Every test drives the CLI as a real process against a GitHub-shaped server and
a deployment API on 127.0.0.1, and asserts the exit code *and* that production's provider
was not asked to change anything. Each attack succeeded before the trust model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import git
from gate_world import (
    CHAT,
    ENVS,
    PRODUCTION,
    Edit,
    World,
    chat_tokens,
    production_model,
    world,
)


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    with world(tmp_path) as it:
        yield it


def blocked(w: World, *args: str, code: int = 3, env: dict[str, str] | None = None) -> str:
    r = w.apply_production(*args, env=env)
    out = r.out + r.err
    assert r.code == code, out
    assert w.writes() == [], f"production's provider was touched: {w.writes()}"
    return out


def notes(text: str) -> Any:
    """A commit that changes no manifest (a README typo, say)."""

    def write(world: World) -> None:
        (world.repo / "NOTES.md").write_text(text)

    return write


# --- 1. a pull request approves itself --------------------------------------------------

#: edit → (the policy edit, the PR's author, who approves its head)
POLICY_ATTACKS: dict[str, tuple[Edit, str, tuple[str, ...]]] = {
    "required-0": ((ENVS, "    required: 2\n", "    required: 0\n"), "mallory", ()),
    "protected-dropped": (
        (
            ENVS,
            "  protected: true\n  approvals:\n    required: 2\n",
            "  approvals:\n    required: 0\n",
        ),
        "mallory",
        (),
    ),
    "approvers-replaced": (
        (
            ENVS,
            'approvers: [alice, bob, carol, mallory, "@acme/ml-leads"]',
            "approvers: [mallory, eve]",
        ),
        "dave",
        ("mallory", "eve"),
    ),
    "self-approval-allowed": (
        (ENVS, "allowSelfApproval: false", "allowSelfApproval: true"),
        "mallory",
        ("mallory", "alice"),
    ),
    "by-risk-lowered": (
        (ENVS, "byRisk: {critical: 3}", "byRisk: {critical: 2}"),
        "dave",
        ("alice", "bob"),
    ),
}


@pytest.mark.parametrize("attack", sorted(POLICY_ATTACKS))
def test_a_pr_cannot_lower_the_policy_it_is_judged_by(w: World, attack: str) -> None:
    edit, author, approve = POLICY_ATTACKS[attack]
    change = (
        (CHAT, "risk: medium", "risk: critical")
        if attack == "by-risk-lowered"
        else chat_tokens(401, 402)
    )
    w.pr(2, [edit, change], author=author, approve=approve)
    out = blocked(w)
    assert "policy" in out


def test_a_pr_cannot_turn_off_fresh_only_for_its_stale_approvals(w: World) -> None:
    w.pr(2, [(ENVS, "freshOnly: true", "freshOnly: false"), chat_tokens(401, 402)], approve=())
    w.gh.add_review(2, "alice", "APPROVED", commit_id="0" * 40)  # an older head
    w.gh.add_review(2, "bob", "APPROVED", commit_id="0" * 40)
    blocked(w)


def test_a_pr_cannot_lower_a_deployments_risk(tmp_path: Path) -> None:
    with world(tmp_path, chat_risk="critical") as w:
        w.pr(2, [(CHAT, "risk: critical", "risk: low"), chat_tokens(401, 402)])  # 2 approvals
        out = blocked(w)
        assert "critical" in out


def test_a_pr_cannot_remove_a_closed_deploy_window(tmp_path: Path) -> None:
    window = '  windows: [{deny: "0 0 * * *", duration: 24h, timezone: UTC}]\n'  # always closed
    closed = PRODUCTION.replace("  allowOverride: true\n", window + "  allowOverride: true\n")
    with world(tmp_path, production=closed, baseline=["--override-window"]) as w:
        w.pr(2, [(ENVS, window, ""), chat_tokens(401, 402)])
        out = blocked(w)
        assert "window" in out


def test_a_pr_cannot_switch_to_an_approvals_file_it_wrote(w: World) -> None:
    """Even where CI points RECONCILER_APPROVALS_FILE into the checkout, the commit
    under judgement does not choose the source: the policy of record's (github) is used."""
    forged = {
        "version": 1,
        "pullRequests": [
            {
                "number": 99,
                "state": "merged",
                "headSha": "9" * 40,
                "author": "dave",
                "reviews": [
                    {"user": "alice", "state": "APPROVED", "commitId": "9" * 40},
                    {"user": "bob", "state": "APPROVED", "commitId": "9" * 40},
                ],
            }
        ],
    }

    def switch(world: World) -> None:
        (world.repo / "approvals.json").write_text(json.dumps(forged))
        (world.repo / "reconciler.yaml").write_text("approvals: {source: file}\n")
        world.edit(chat_tokens(401, 402))

    w.pr(2, switch, author="mallory", approve=())
    blocked(w, "--pr", "99", env={"RECONCILER_APPROVALS_FILE": str(w.repo / "approvals.json")})


# --- 2. uncommitted edits ------------------------------------------------------------


def test_uncommitted_edits_are_never_applied(w: World) -> None:
    w.pr(2, [chat_tokens(401, 402)])  # approved and merged
    w.edit(production_model("llama-3.1-8b-instruct"))  # never committed
    out = blocked(w, code=1)
    assert CHAT in out


def test_a_saved_plan_without_a_commit_is_refused(w: World, tmp_path: Path) -> None:
    w.pr(2, [chat_tokens(401, 402)])
    w.edit(production_model("llama-3.1-8b-instruct"))
    saved = tmp_path / "plan.json"
    assert w.cli("plan", "--env", "production", "--out", str(saved)).code == 0
    doc = json.loads(saved.read_text())
    doc["commit"], doc["dirty"] = None, False
    saved.write_text(json.dumps(doc))
    out = blocked(w, "--plan", str(saved), code=1)
    assert "commit" in out


# --- 3. --pr N (or the CI event's PR) for an unrelated commit ----------------------------


def _open_pr_elsewhere(w: World, head: str) -> None:
    w.gh.add_pull_request(5, author="dave", head_sha=head, merged=False, base="other")
    w.gh.add_review(5, "alice", "APPROVED", commit_id=head)
    w.gh.add_review(5, "bob", "APPROVED", commit_id=head)


def test_pr_flag_does_not_approve_a_direct_push(w: World) -> None:
    w.push("straight to main", production_model("llama-3.1-8b-instruct"))
    _open_pr_elsewhere(w, "5" * 40)
    blocked(w, "--pr", "5")


def test_the_ci_events_pr_does_not_approve_a_direct_push(w: World, tmp_path: Path) -> None:
    sha = w.push("straight to main", production_model("llama-3.1-8b-instruct"))
    _open_pr_elsewhere(w, sha)
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 5, "head": {"sha": sha}}}))
    ci = {"GITHUB_ACTIONS": "true", "GITHUB_EVENT_PATH": str(event), "GITHUB_SHA": sha}
    blocked(w, env=ci)


# --- 4. loose commit ↔ PR binding --------------------------------------------------------


def test_an_intermediate_commit_of_an_approved_pr_is_not_deployable(w: World) -> None:
    pr = w.pr(
        6,
        [production_model("llama-3.1-8b-instruct")],
        [production_model("gpt-4o-mini", old="llama-3.1-8b-instruct")],
        approve=(),
    )
    w.gh.add_review(6, "alice", "CHANGES_REQUESTED", commit_id=pr.commits[0])
    w.gh.add_review(6, "alice", "APPROVED", commit_id=pr.head)
    w.gh.add_review(6, "bob", "APPROVED", commit_id=pr.head)
    blocked(w, "--commit", pr.commits[0])


def test_a_pr_into_another_branch_does_not_approve_main(w: World) -> None:
    git(w.repo, "branch", "experiments", "main")
    pr = w.pr(7, [production_model("llama-3.1-8b-instruct")], base="experiments")
    git(w.repo, "checkout", "-q", "main")
    git(w.repo, "merge", "-q", "--ff-only", pr.merged)  # then pushed to main as it was
    blocked(w)


# --- 5. ride-along ---------------------------------------------------------------------


def test_an_unreviewed_change_does_not_ride_along_with_a_reviewed_one(w: World) -> None:
    sneaky = w.push("tweak", production_model("llama-3.1-8b-instruct"))
    blocked(w)  # blocked on its own, as it always was
    w.pr(8, notes("a typo, fixed\n"))  # two approvals, no manifest touched
    out = blocked(w)
    assert sneaky[:7] in out


def test_an_exact_revert_of_an_unrelated_commit_lends_no_rollback_policy(w: World) -> None:
    docs = w.pr(8, notes("docs\n"))
    w.push("tweak", production_model("llama-3.1-8b-instruct"))
    git(w.repo, "checkout", "-q", "-b", "rollback-9")
    git(w.repo, "revert", "--no-edit", "-m", "1", docs.merged)
    head = git(w.repo, "rev-parse", "HEAD")
    git(w.repo, "checkout", "-q", "main")
    git(w.repo, "merge", "-q", "--ff-only", "rollback-9")
    w.gh.add_pull_request(9, author="dave", head_sha=head, merge_commit_sha=head)
    w.gh.add_commit(9, head, author="dave")
    w.gh.add_review(9, "alice", "APPROVED", commit_id=head)  # enough for a rollback
    blocked(w)


# --- 6. hand-edited saved plans --------------------------------------------------------


def _saved(w: World, tmp_path: Path, *args: str) -> tuple[Path, dict[str, Any]]:
    saved = tmp_path / "plan.json"
    r = w.cli("plan", "--env", "production", "--out", str(saved), *args)
    assert r.code == 0, r.err
    return saved, json.loads(saved.read_text())


def test_a_saved_plan_with_a_lowered_risk_is_refused(tmp_path: Path) -> None:
    with world(tmp_path, chat_risk="critical") as w:
        w.pr(2, [chat_tokens(401, 402)])  # two approvals: not enough for critical
        saved, doc = _saved(w, tmp_path)
        for ch in doc["environments"][0]["changes"]:
            ch["risk"] = "low"
        saved.write_text(json.dumps(doc))
        blocked(w, "--plan", str(saved), code=1)


def test_a_saved_plan_with_a_cleared_refusal_is_refused(w: World, tmp_path: Path) -> None:
    w.pr(2, lambda world: (world.repo / "manifests/deployments/reranker.yaml").unlink())
    saved, doc = _saved(w, tmp_path)
    changes = doc["environments"][0]["changes"]
    assert any(c["refused"] for c in changes)
    for ch in changes:
        ch["refused"] = None
    saved.write_text(json.dumps(doc))
    blocked(w, "--plan", str(saved), code=1)


def test_a_saved_plan_with_an_injected_delete_is_refused(w: World, tmp_path: Path) -> None:
    w.pr(2, [chat_tokens(401, 402)])
    saved, doc = _saved(w, tmp_path, "--allow-delete")
    doc["environments"][0]["changes"].append(
        {
            "action": "delete",
            "kind": "Deployment",
            "name": "docs-embedder",
            "provider": "registry",
            "risk": "low",
            "reason": None,
            "refused": None,
            "depends_on": [],
            "before": {},
            "after": None,
            "diff": [],
            "secret_fingerprints": {},
            "next_runs": [],
        }
    )
    saved.write_text(json.dumps(doc))
    blocked(w, "--plan", str(saved), "--allow-delete", code=1)


# --- 7. identity -----------------------------------------------------------------------


def test_an_author_without_a_forge_account_cannot_approve_their_change(w: World) -> None:
    pr = w.pr(2, [chat_tokens(401, 402)], author="dave", approve=("mallory", "alice"))
    w.gh.pr_commits[2].clear()
    w.gh.add_commit(2, pr.head, author=None, author_email="mallory@personal.example")
    out = blocked(w)
    assert "unknown" in out


def test_a_co_author_cannot_approve_their_change(w: World) -> None:
    pr = w.pr(2, [chat_tokens(401, 402)], author="dave", approve=("mallory", "alice"))
    w.gh.pr_commits[2].clear()
    w.gh.add_commit(
        2, pr.head, author="dave",
        message="Change\n\nCo-authored-by: Mallory <mallory@personal.example>\n",
    )  # fmt: skip
    blocked(w)


@pytest.mark.parametrize("reviewer", ["github-actions[bot]", "drive-by"])
def test_with_any_approver_only_people_with_write_access_count(
    tmp_path: Path, reviewer: str
) -> None:
    listed = 'approvers: [alice, bob, carol, mallory, "@acme/ml-leads"]'
    with world(tmp_path, production=PRODUCTION.replace(listed, "approvers: []")) as w:
        w.pr(2, [chat_tokens(401, 402)], approve=("alice", reviewer))
        for review in w.gh.reviews[2]:
            if review["user"]["login"] == "drive-by":
                review["author_association"] = "CONTRIBUTOR"
        blocked(w)


# --- 8. crashes become verdicts -------------------------------------------------------


def test_a_team_api_error_blocks_production_and_lets_the_rest_proceed(w: World) -> None:
    w.pr(2, [chat_tokens(401, 402)], approve=("alice", "zed"))  # zed counts only via the team
    w.gh.fail_next(1, status=403, body={"message": "Must have admin rights"}, path_re="/teams/")
    r = w.cli("apply")
    out = r.out + r.err
    assert r.code == 3, out
    assert "dev: applied" in out and "staging: applied" in out and "production: BLOCKED" in out
    assert w.writes() == []


def test_mixed_naive_and_aware_review_times_are_refused_not_a_crash(tmp_path: Path) -> None:
    with world(tmp_path, source="file") as w:
        pr = w.pr(2, [chat_tokens(401, 402)], register=False)
        w.file_pr(2, "dave", pr.head, pr.merged, pr.commits, ())
        w.approvals_doc["pullRequests"][-1]["reviews"] = [
            {"user": "alice", "state": "APPROVED", "commitId": pr.head,
             "submittedAt": "2026-03-02T10:00:00"},
            {"user": "bob", "state": "APPROVED", "commitId": pr.head,
             "submittedAt": "2026-03-02T10:00:00Z"},
        ]  # fmt: skip
        w.save_approvals()
        blocked(w)


def test_contradictory_team_facts_in_the_approvals_file_are_refused(tmp_path: Path) -> None:
    with world(tmp_path, source="file") as w:
        w.pr(2, [chat_tokens(401, 402)], approve=("alice", "zed"))  # zed only via the team
        w.approvals_doc["teams"] = {
            "acme/ml-leads": ["zed"],
            "@acme/ml-leads": {"pending": ["zed"]},
        }
        w.save_approvals()
        blocked(w)


# --- the plan comment, the approvals file, the JSON verdict ------------------------------


def test_the_plan_comment_upsert_never_edits_someone_elses_comment(w: World) -> None:
    w.pr(2, [chat_tokens(401, 402)])
    forged = w.gh.add_comment(2, "<!-- reconciler:plan -->\nLooks fine, merge it!", user="mallory")
    for _ in range(2):
        assert w.cli("plan", "--comment", "--pr", "2").code == 0
    assert forged["body"] == "<!-- reconciler:plan -->\nLooks fine, merge it!"
    ours = [c for c in w.gh.comments[2] if c["user"]["login"] == w.gh.me]
    assert len(ours) == 1 and "support-chat" in ours[0]["body"]


def test_the_approvals_file_is_never_named_in_the_repo(tmp_path: Path) -> None:
    with world(tmp_path, source="file") as w:
        (w.repo / "reconciler.yaml").write_text("approvals: {source: file, file: approvals.json}\n")
        r = w.cli("validate")
        assert r.code == 1 and "RECONCILER_APPROVALS_FILE" in r.err
        (w.repo / "reconciler.yaml").write_text("approvals: {source: file}\n")
        inside = w.repo / "approvals.json"
        inside.write_text(w.approvals_file.read_text() if w.approvals_file else "{}")
        w.pr(2, [chat_tokens(401, 402)])
        out = blocked(w, env={"RECONCILER_APPROVALS_FILE": str(inside)})
        assert "inside the manifests repo" in out
        assert (
            w.cli("--approvals-file", str(w.approvals_file), "apply", "--env", "production").code
            == 0
        )


def test_approvals_json_names_the_policy_of_record_and_the_coverage(w: World) -> None:
    sneaky = w.push("tweak", production_model("llama-3.1-8b-instruct"))
    pr = w.pr(8, notes("a typo\n"))
    r = w.cli("approvals", "--json", "--commit", pr.merged)
    assert r.code == 3
    doc = json.loads(r.out)["environments"]["production"]
    assert doc["policy"]["origin"].startswith("run ") and doc["policy"]["changed"] is False
    assert doc["policy"]["document"]["environment"]["approvals"]["required"] == 2
    covered = {c["commit"]: c for c in doc["coverage"]}
    assert covered[sneaky]["covered"] is False
    assert "direct push" in " ".join(covered[sneaky]["problems"])


def test_dropping_protection_does_not_let_a_change_delete_freely(w: World) -> None:
    """The delete is refused by the policy of record's `protected`, however many
    approvals the change that drops it gathers."""

    def drop(world: World) -> None:
        world.edit((ENVS, "  protected: true\n", ""))
        (world.repo / "manifests/deployments/reranker.yaml").unlink()

    w.pr(2, drop, approve=("alice", "bob", "carol"))
    out = blocked(w)
    assert "--allow-delete" in out


def test_a_heal_does_not_move_the_recorded_state_past_an_unreviewed_push(w: World) -> None:
    """A heal re-applies recorded specs; it must not record the checkout's HEAD (an
    unreviewed push) as where the environment stands, or that push would ride along."""
    sneaky = w.push("tweak", production_model("llama-3.1-8b-instruct"))
    w.api.tamper("deployments", "production", "support-chat", model="drifted")
    healed = w.cli("apply", "--heal", "--env", "production")
    assert healed.code == 0, healed.out + healed.err
    w.forget_requests()
    w.pr(8, notes("a typo\n"))
    out = blocked(w)
    assert sneaky[:7] in out


# --- 6. trust from an unreviewed past, loose coverage, settings and variables (issue 23)


def _strip_recorded_policies(w: World) -> None:
    """The state as a version that recorded no policy left it (an upgrade)."""
    import sqlite3

    db = sqlite3.connect(w.repo / ".reconciler/state.db")
    with db:
        db.execute("UPDATE runs SET policy = NULL")
    db.close()


OPEN_THE_DOOR: Edit = (
    ENVS,
    "  protected: true\n  approvals:\n    required: 2\n",
    "  approvals:\n    required: 0\n",
)


@pytest.mark.parametrize("past", ["never-applied", "upgraded"])
def test_two_direct_pushes_do_not_reach_a_protected_environment(tmp_path: Path, past: str) -> None:
    with world(tmp_path, applied=past == "upgraded") as w:
        if past == "upgraded":
            _strip_recorded_policies(w)
        w.push("open the door", OPEN_THE_DOOR)
        w.push("walk through", production_model("llama-3.1-8b-instruct"))
        out = blocked(w)
        assert "not covered" in out and "a direct push" in out, out


def test_a_reviewed_policy_change_in_history_is_in_force(tmp_path: Path) -> None:
    """The replay is not mere strictness: a relaxation that went through review holds."""
    with world(tmp_path, applied=False) as w:
        w.pr(2, [OPEN_THE_DOOR], approve=("alice", "bob", "carol"))  # critical: 3
        w.push("then a direct push", production_model("llama-3.1-8b-instruct"))
        r = w.apply_production()
        assert r.code == 0, r.out + r.err


def test_with_nothing_recorded_an_earlier_direct_push_does_not_ride_along(tmp_path: Path) -> None:
    with world(tmp_path, applied=False) as w:
        sneaky = w.push("tweak", production_model("llama-3.1-8b-instruct"))
        w.pr(2, notes("a typo, fixed\n"))
        out = blocked(w)
        assert sneaky[:7] in out


@pytest.mark.parametrize("merge", ["merge", "squash"])
def test_a_pr_does_not_cover_the_direct_push_below_its_merge(w: World, merge: str) -> None:
    sneaky = w.push("tweak", production_model("llama-3.1-8b-instruct"))
    w.pr(9, notes("one\n"), notes("two\n"), merge=merge)  # type: ignore[arg-type]
    out = blocked(w, "--pr", "9")
    assert sneaky[:7] in out


def test_a_rebase_merge_covers_its_copies_where_the_forge_lists_them(w: World) -> None:
    w.pr(
        9,
        [production_model("llama-3.1-8b-instruct")],
        [production_model("gpt-4o-mini", old="llama-3.1-8b-instruct")],
        merge="rebase",
    )
    r = w.apply_production()
    assert r.code == 0, r.out + r.err


def test_moving_a_providers_url_is_a_change_that_needs_review(w: World) -> None:
    from fakes.deploy_api import FakeDeployApi
    from gate_world import API_TOKEN, PROVIDERS

    with FakeDeployApi(token=API_TOKEN) as elsewhere:
        w.push("move", (PROVIDERS, f'baseUrl: "{w.api.url}"', f'baseUrl: "{elsewhere.url}"'))
        r = w.cli("plan", "--env", "production")
        assert elsewhere.url in r.out and "provider registry" in r.out, r.out
        w.pr(9, [chat_tokens(401, 402)])  # two approvals, not the three a policy change needs
        out = blocked(w)
        assert "alters the policy" in out
        assert elsewhere.requests == [], "the token went to an unreviewed host"


def test_an_open_environment_cannot_send_anothers_token_elsewhere(w: World) -> None:
    """dev needs no approvals, but the token it would send is production's."""
    from fakes.deploy_api import FakeDeployApi
    from gate_world import API_TOKEN

    with FakeDeployApi(token=API_TOKEN) as elsewhere:
        (w.repo / "manifests/exfil.yaml").write_text(
            "apiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: exfil}\nspec:\n"
            "  type: http\n  environments: [dev]\n"
            f'  config: {{baseUrl: "{elsewhere.url}"}}\n'
            "  credentials: {tokenEnv: REGISTRY_TOKEN}\n"
        )
        w.push("exfiltrate", (CHAT, "  overrides:\n", "  overrides:\n    dev: {provider: exfil}\n"))
        r = w.cli("apply", "--env", "dev")
        assert r.code == 3, r.out + r.err
        assert "environment production's policy of record" in r.out + r.err
        assert elsewhere.requests == [], "production's token went to an unreviewed host"


@pytest.mark.parametrize(
    "name", ["GITHUB_TOKEN", "RECONCILER_NOTIFY_SLACK", "CI_JOB_TOKEN", "AZURE_CLIENT_SECRET"]
)
def test_no_manifest_reads_the_forges_or_the_reconcilers_own_variables(w: World, name: str) -> None:
    leak = f"env: {{LOG_LEVEL: info, LEAK: {{secretEnv: {name}}}}}"
    w.push("read it", (CHAT, "env: {LOG_LEVEL: info}", leak))
    r = w.cli("validate")
    assert r.code == 1, r.out + r.err
    assert f"{name} is reserved" in r.err and "support-chat.yaml:" in r.err


# --- 7. found by an attack on the rewritten gate --------------------------------------


@pytest.mark.parametrize("past", ["never-applied", "upgraded"])
def test_an_unrelated_history_does_not_declare_a_policy(tmp_path: Path, past: str) -> None:
    """An orphan branch whose root declares production open: with nothing recorded the
    policy comes from the deploy branch's history, never from the commit's own."""
    from conftest import commit_all

    with world(tmp_path, applied=past == "upgraded") as w:
        if past == "upgraded":
            _strip_recorded_policies(w)
        git(w.repo, "checkout", "-q", "--orphan", "evil")
        w.edit(OPEN_THE_DOOR, production_model("llama-3.1-8b-instruct"))
        sha = commit_all(w.repo, "orphan root")
        w.gh.link_commit(sha)
        git(w.repo, "checkout", "-q", "main")
        blocked(w, "--commit", sha)


def test_an_upgraded_environment_still_claims_its_variables(w: World) -> None:
    """production's runs were recorded without a policy: its history says it reads
    REGISTRY_TOKEN, so an open dev cannot send that token to a host of its own."""
    from fakes.deploy_api import FakeDeployApi
    from gate_world import API_TOKEN

    _strip_recorded_policies(w)
    with FakeDeployApi(token=API_TOKEN) as elsewhere:
        (w.repo / "manifests/exfil.yaml").write_text(
            "apiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: exfil}\nspec:\n"
            "  type: http\n  environments: [dev]\n"
            f'  config: {{baseUrl: "{elsewhere.url}"}}\n'
            "  credentials: {tokenEnv: REGISTRY_TOKEN}\n"
        )
        w.push("exfiltrate", (CHAT, "  overrides:\n", "  overrides:\n    dev: {provider: exfil}\n"))
        r = w.cli("apply", "--env", "dev")
        assert r.code == 3, r.out + r.err
        assert elsewhere.requests == [], "production's token went to an unreviewed host"


def test_a_push_to_a_symlinks_target_is_a_change_to_cover(w: World) -> None:
    """A manifest that is a symlink: a commit changing only its target changes what the
    environment runs, even after a commit that touched nothing the manifests read."""
    import os

    from conftest import commit_all

    linked = (
        "apiVersion: reconciler/v1\nkind: Deployment\nmetadata: {name: linked}\nspec:\n"
        "  environments: [production]\n  provider: registry\n  model: gpt-4o\n  risk: low\n"
    )

    def add_link(world: World) -> None:
        (world.repo / "shared").mkdir()
        (world.repo / "shared/linked.yaml").write_text(linked)
        os.symlink("../../shared/linked.yaml", world.repo / "manifests/deployments/linked.yaml")

    w.pr(2, add_link)
    assert w.apply_production().code == 0
    w.forget_requests()
    git(w.repo, "checkout", "-q", "main")
    (w.repo / "NOTES.txt").write_text("x\n")
    w.gh.link_commit(commit_all(w.repo, "notes"))
    sneaky = w.push("tweak", ("shared/linked.yaml", "model: gpt-4o", "model: gpt-4o-mini"))
    w.pr(3, [chat_tokens(401, 402)])
    out = blocked(w)
    assert sneaky[:7] in out


def test_every_refusal_says_what_to_do_next(w: World) -> None:
    """A blocked environment gets its next step, in the text and in the JSON."""
    w.push("straight to main", production_model("llama-3.1-8b-instruct"))
    out = blocked(w)
    assert "next: land the change through a pull request" in out
    r = w.cli("approvals", "--json")
    refusals = json.loads(r.out)["environments"]["production"]["refusals"]
    assert refusals and all(x["reason"] and x["fix"] for x in refusals)
    r = w.cli("approvals")
    assert "next: " in r.out
