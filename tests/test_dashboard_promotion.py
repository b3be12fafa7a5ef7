"""The dashboard's promotion matrix says, in an environment with `spec.promotion`, whether
what the source runs may be promoted into it and why not: the reason `reconciler
promote` gives at the same moment (one rule, `gate.judge.not_eligible` over
`gate.evidence.evidence_for`), in the JSON API document and on the HTML page. The state
is made through the CLI (libfaketime dates the applies); the app runs in process."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conftest import commit_all
from promotion_world import at, cli, make_repo, needs_faketime
from starlette.testclient import TestClient
from test_cli_promote import staging_runs_1_1_0

from reconciler.config import load_settings
from reconciler.dashboard.app import make_app
from reconciler.dashboard.refresh import Refresher
from reconciler.engine.promote import promote
from reconciler.session import Session

pytestmark = needs_faketime


def world(tmp_path: Path) -> Path:
    """Production runs 1.0.0 (pinned); staging applied 1.1.0 at 2030-01-08 09:00 with a
    passing check; production needs a 2h soak in staging."""
    repo = make_repo(tmp_path / "repo")
    assert cli(repo, "apply", env=at("2030-01-07 10:00:00")).code == 3
    assert cli(repo, "apply", env=at("2030-01-07 12:30:00")).code == 0
    staging_runs_1_1_0(repo)
    assert cli(repo, "apply", env=at("2030-01-08 09:00:00")).code == 0
    return repo


def dashboard(repo: Path, now: datetime) -> TestClient:
    session = Session.start(load_settings(repo))
    refresher = Refresher(session, verdicts=lambda p: {}, live=False, clock=lambda: now)
    refresher.refresh()
    return TestClient(make_app(session, refresher=refresher, allowed_hosts=["testserver"]))


def cells(client: TestClient) -> dict[str, Any]:
    doc = client.get("/api/overview").json()
    (row,) = [r for r in doc["matrix"]["rows"] if r["name"] == "chat"]
    return dict(row["cells"])


def promote_says(repo: Path, now: datetime) -> str | None:
    (item,) = promote(Session.start(load_settings(repo)), "staging", "production", now=now).items
    return item.blocked


def test_the_matrix_says_why_a_deployment_is_not_eligible_yet_then_that_it_is(
    tmp_path: Path,
) -> None:
    repo = world(tmp_path)
    soaking = datetime(2030, 1, 8, 10, 0, tzinfo=UTC)
    with dashboard(repo, soaking) as client:
        c = cells(client)
        assert c["staging"]["promotion"] is None  # staging takes nothing from anywhere
        p = c["production"]["promotion"]
        assert p["from"] == "staging" and p["eligible"] is False and p["current"] is False
        assert p["reason"].startswith("is soaking in staging: applied ")
        assert p["reason"] == promote_says(repo, soaking)  # the same rule, the same words
        assert p["digest"].startswith("sha256:")
        page = client.get("/matrix")
        assert page.status_code == 200
        cell = re.search(
            r'<td class="cell[^"]*" data-env="production" data-deployment="chat">(.*?)</td>',
            page.text,
            re.S,
        )
        assert cell is not None, page.text
        assert 'data-eligible="false"' in cell.group(1)
        assert "not eligible from staging" in cell.group(1)
        assert "is soaking in staging: applied " in cell.group(1)

    soaked = datetime(2030, 1, 8, 12, 0, tzinfo=UTC)
    with dashboard(repo, soaked) as client:
        p = cells(client)["production"]["promotion"]
        assert p == {
            "from": "staging",
            "digest": p["digest"],
            "eligible": True,
            "reason": None,
            "current": False,
        }
        assert promote_says(repo, soaked) is None
        assert "eligible from staging" in client.get("/matrix").text


def test_the_matrix_shows_a_failed_check_revoking_eligibility(tmp_path: Path) -> None:
    repo = world(tmp_path)
    # a second check, added later, fails on what staging runs: a failure since it was
    # applied there revokes its pass
    checks = repo / "manifests" / "checks.yaml"
    checks.write_text(
        checks.read_text()
        + "---\napiVersion: reconciler/v1\nkind: Check\nmetadata: {name: strict}\nspec:\n"
        "  deployment: chat\n  environments: [staging]\n  requests:\n"
        "    - input: {question: 'refund?'}\n      expect: {contains: [never-said]}\n"
    )
    prompts = repo / "manifests" / "prompts.yaml"
    prompts.write_text(
        prompts.read_text()
        + "    - {version: 1.2.0, template: 'Answer briefly and kindly: {{question}}.'}\n"
    )
    deps = repo / "manifests" / "deployments.yaml"
    deps.write_text(deps.read_text().replace("prompt: answer@1.1.0", "prompt: answer@1.2.0"))
    commit_all(repo, "staging takes 1.2.0, under a stricter check")
    r = cli(repo, "apply", "--env", "staging", env=at("2030-01-09 09:00:00"))
    assert r.code == 1 and "never-said" in r.out, r.out + r.err
    later = datetime(2030, 1, 9, 15, 0, tzinfo=UTC)
    with dashboard(repo, later) as client:
        p = cells(client)["production"]["promotion"]
        assert p["eligible"] is False
        assert p["reason"] == "failed 1 check request(s) in staging since it was applied there"
        assert p["reason"] == promote_says(repo, later)
