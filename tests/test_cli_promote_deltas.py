"""`reconciler promote` shows what the source runs beside the target's current instance:
usage since each was applied (requests, success, latency, cost), from executions made
by `reconciler run` through the CLI, so the numbers are the recorded ones. Unknown cost
stays unknown; an instance nothing called says "no runs yet"."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from conftest import commit_all, write_files
from fakes.forge import FakeGitHub
from promotion_world import as_json, at, cli, make_repo, needs_faketime

pytestmark = needs_faketime

#: Staging priced (its cost is known), production not (unknown, never 0); production
#: pinned to 1.0.0 while staging runs 1.1.0. The check runs in staging only, so nothing
#: calls production until `reconciler run` does.
DEPLOYMENTS = (
    "apiVersion: reconciler/v1\nkind: Deployment\nmetadata: {name: chat}\nspec:\n"
    "  environments: [staging, production]\n  provider: local\n"
    "  model: gpt-4o-mini\n  prompt: answer@1.1.0\n"
    "  overrides:\n"
    "    staging:\n"
    "      pricing: {inputPerMillionTokens: 1000, outputPerMillionTokens: 2000}\n"
    "    production: {prompt: answer@1.0.0}\n"
)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def world(tmp_path: Path) -> Path:
    """Staging applied 1.1.0 on 2030-01-08 09:00 (soaked by 11:00); production 1.0.0."""
    repo = make_repo(tmp_path / "repo")
    checks = repo / "manifests" / "checks.yaml"
    checks.write_text(checks.read_text().replace("[staging, production]", "[staging]"))
    commit_all(repo, "the smoke check in staging only")
    assert cli(repo, "apply", env=at("2030-01-07 10:00:00")).code == 3
    assert cli(repo, "apply", env=at("2030-01-07 12:30:00")).code == 0
    write_files(repo, {"manifests/deployments.yaml": DEPLOYMENTS})
    commit_all(repo, "staging takes 1.1.0 (priced), production stays")
    assert cli(repo, "apply", env=at("2030-01-08 09:00:00")).code == 0
    return repo


def run(repo: Path, env: str, payload: str, when: str) -> int:
    return cli(repo, "run", "chat", "--env", env, "--input", payload, env=at(when)).code


def recorded(repo: Path, env: str) -> list[dict[str, Any]]:
    """The executions since the 2030-01-08 apply (the instances compared)."""
    doc = as_json(cli(repo, "executions", "--env", env, "--json", env=at("2030-01-08 11:59:00")))
    return [e for e in doc if e["created_at"] >= "2030-01-08T09"]


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, -(-p * len(ordered) // 100)) - 1]


def test_promote_shows_usage_deltas_from_recorded_executions(tmp_path: Path) -> None:
    repo = world(tmp_path)
    before = cli(repo, "promote", "--from", "staging", "--to", "production",
                 env=at("2030-01-08 11:30:00"))  # fmt: skip
    assert before.code == 0, before.out + before.err
    assert "usage in production: no runs yet" in before.out
    assert re.search(r"usage in staging: 1 request, success 100\.0%, .*cost per request "
                     r"0\.\d+ USD", before.out), before.out  # fmt: skip

    # production: two answers and one call the template refuses (no `question`)
    assert run(repo, "production", '{"question": "refund?"}', "2030-01-08 11:10:00") == 0
    assert run(repo, "production", '{"question": "late parcel?"}', "2030-01-08 11:11:00") == 0
    assert run(repo, "production", "{}", "2030-01-08 11:12:00") == 1
    assert run(repo, "staging", '{"question": "refund?"}', "2030-01-08 11:13:00") == 0

    r = cli(repo, "promote", "--from", "staging", "--to", "production",
            env=at("2030-01-08 12:00:00"))  # fmt: skip
    assert r.code == 0, r.out + r.err
    assert "usage (production now → staging):" in r.out
    assert "requests 3 → 2" in r.out
    assert "success 66.7% → 100.0%" in r.out
    assert re.search(r"cost per request unknown → 0\.\d+ USD\n", r.out), r.out
    assert re.search(r"p95 latency [\d.]+ ms → [\d.]+ ms( \([+−±]\d+%\))?\n", r.out), r.out

    (item,) = as_json(cli(repo, "promote", "--from", "staging", "--to", "production",
                          "--json", env=at("2030-01-08 12:00:00")))["deployments"]  # fmt: skip
    usage = item["usage"]
    prod, stag = recorded(repo, "production"), recorded(repo, "staging")
    prod_latency = [e["latency_ms"] for e in prod if e["status"] == "completed"]
    stag_latency = [e["latency_ms"] for e in stag if e["status"] == "completed"]
    assert usage["target"] == {
        "requests": 3,
        "successRate": 2 / 3,
        "latencyMs": {"p50": nearest_rank(prod_latency, 50), "p95": nearest_rank(prod_latency, 95)},
        "costPerRequest": None,
        "currency": None,
    }
    stag_cost = sum(e["cost"] for e in stag) / len(stag)
    assert usage["source"]["requests"] == 2 and usage["source"]["successRate"] == 1.0
    assert usage["source"]["latencyMs"]["p95"] == nearest_rank(stag_latency, 95)
    assert usage["source"]["costPerRequest"] == round(stag_cost, 10) > 0
    assert usage["source"]["currency"] == "USD"
    deltas = {d["metric"]: d for d in usage["deltas"]}
    p95 = deltas["p95 latency"]
    assert (p95["from"], p95["to"]) == (
        nearest_rank(prod_latency, 95),
        nearest_rank(stag_latency, 95),
    )
    if p95["from"]:
        assert p95["change"] == (p95["to"] - p95["from"]) / p95["from"]
    cost = deltas["cost per request"]
    assert cost["from"] is None and cost["change"] is None and cost["to"] > 0
    assert deltas["success"]["change"] is None  # a rate moves in points, shown as is


def test_promote_pull_request_body_carries_the_deltas(tmp_path: Path) -> None:
    repo = world(tmp_path)
    (repo / "reconciler.yaml").write_text(
        "approvals: {source: github, repository: acme/manifests}\n"
    )
    commit_all(repo, "config")
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    assert run(repo, "production", "{}", "2030-01-08 11:12:00") == 1
    with FakeGitHub() as gh:
        env = {"GITHUB_TOKEN": gh.token, "GITHUB_API_URL": gh.url, **at("2030-01-08 12:00:00")}
        r = cli(repo, "promote", "--from", "staging", "--to", "production",
                "--branch", "promote-chat", "--open-pr", env=env)  # fmt: skip
        assert r.code == 0, r.out + r.err
        body = gh.pulls[1]["body"]
    assert "Usage since applied (production now → staging):" in body
    assert "- **chat**: requests 1 → 1; success 0.0% → 100.0%;" in body
    assert "cost per request unknown → 0." in body
