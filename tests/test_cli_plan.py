"""plan / apply / status through the real CLI on real git repos and SQLite state."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import ROOT, Result, commit_all, git, run_cli

GOLDEN = Path(__file__).parent / "golden"
SECRET = "sk-live-0123456789abcdef-SECRET"
CHAT = "manifests/deployments/support-chat.yaml"
RERANK = "manifests/deployments/reranker.yaml"
SCHED = "manifests/schedules/reindex.yaml"
SUM2 = "manifests/deployments/ticket-summarizer-2.yaml"
ENVS = "manifests/environments.yaml"


def cli(repo: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return run_cli(["--repo", str(repo), *args], env=env)


def edit(repo: Path, rel: str, old: str, new: str) -> None:
    p = repo / rel
    text = p.read_text()
    assert old in text, f"{old!r} not in {rel}"
    p.write_text(text.replace(old, new, 1))


def plan_json(repo: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    r = cli(repo, "plan", "--json", *args, env=env)
    assert r.code == 0, r.err
    return json.loads(r.out)


def changes(plan: dict, env: str) -> dict[str, str]:
    e = next(e for e in plan["environments"] if e["name"] == env)
    return {f"{c['kind']}/{c['name']}": c["action"] for c in e["changes"]}


def recorded_names(repo: Path) -> set[str]:
    return {row["name"] for row in json.loads(cli(repo, "status", "--json").out)}


def test_validate_example_and_no_traceback_on_bad_input(example_repo: Path) -> None:
    r = cli(example_repo, "validate")
    assert r.code == 0, r.err
    assert re.match(r"valid: \d+ documents, \d+ instances, 3 environments", r.out)
    edit(example_repo, CHAT, "model: gpt-4o-mini", "modle: x")
    (example_repo / "manifests" / "junk.yaml").write_bytes(b"\xff\xfe\x00binary")
    r = cli(example_repo, "validate")
    assert r.code == 1
    assert "Traceback" not in r.err + r.out
    assert "manifests/deployments/support-chat.yaml:8:3: " in r.err
    assert "did you mean 'model'" in r.err
    assert "manifests/junk.yaml:1:1: " in r.err


def test_init_creates_a_valid_repo(tmp_path: Path) -> None:
    r = run_cli(["init", str(tmp_path / "new")])
    assert r.code == 0, r.err
    new = tmp_path / "new"
    assert ".reconciler/" in (new / ".gitignore").read_text()
    yamls = list(new.rglob("*.yaml"))
    assert any("yaml-language-server: $schema=" in p.read_text() for p in yamls)
    r = cli(new, "validate")
    assert r.code == 0, r.err
    assert "2 environments (dev, production)" in r.out


def test_committed_schemas_are_current(tmp_path: Path) -> None:
    r = run_cli(["schema", "--out", str(tmp_path / "schemas")])
    assert r.code == 0, r.err
    fresh = {p.name: p.read_text() for p in (tmp_path / "schemas").iterdir()}
    committed = {p.name: p.read_text() for p in (ROOT / "schemas").iterdir()}
    assert fresh == committed, "schemas/ is stale: run `reconciler schema --out schemas`"


def test_fresh_plan_is_all_creates_then_nothing_after_apply(example_repo: Path) -> None:
    plan = plan_json(example_repo)
    head = git(example_repo, "rev-parse", "HEAD")
    assert plan["format_version"] == 1 and plan["commit"] == head and plan["dirty"] is False
    for e in plan["environments"]:
        assert e["serial"] == 0
        assert set(changes(plan, e["name"]).values()) == {"create"}
    dev = next(e for e in plan["environments"] if e["name"] == "dev")
    kinds = [c["kind"] for c in dev["changes"]]
    assert kinds == sorted(kinds), "deployments before the schedules that run them"

    r = cli(example_repo, "apply", "--env", "dev", "--env", "staging")
    assert r.code == 0, r.out + r.err
    plan = plan_json(example_repo, "--env", "dev", "--env", "staging")
    assert all(not e["changes"] for e in plan["environments"])
    assert all(e["serial"] > 0 for e in plan["environments"])
    r = cli(example_repo, "plan", "--env", "dev", "--detailed-exitcode")
    assert r.code == 0 and "no changes" in r.out

    r = cli(example_repo, "status", "--json")
    rows = json.loads(r.out)
    assert {row["environment"] for row in rows} == {"dev", "staging"}
    sched = [row for row in rows if row["kind"] == "Schedule"]
    assert sched and all(row["next_run"] for row in sched)


def test_every_action_and_protected_delete(example_repo: Path) -> None:
    assert cli(example_repo, "apply", "--env", "dev").code == 0
    first = git(example_repo, "rev-parse", "HEAD")
    edit(
        example_repo,
        CHAT,
        "temperature: 0.2",
        "temperature: 0.3",
    )
    edit(
        example_repo,
        RERANK,
        "hardware: nvidia-l4",
        "hardware: nvidia-a10g",
    )
    os.remove(example_repo / "manifests/deployments/docs-embedder.yaml")
    edit(example_repo, SCHED, "deployment: docs-embedder", "deployment: support-chat")
    (example_repo / SUM2).write_text(
        "apiVersion: reconciler/v1\nkind: Deployment\nmetadata: {name: ticket-summarizer-2}\n"
        "spec: {environments: [dev], provider: local, model: gpt-4o, endpoint: /v2}\n"
    )
    dirty = plan_json(example_repo, "--env", "dev")
    assert dirty["dirty"] is True
    assert changes(dirty, "dev") == {
        "Deployment/support-chat": "update",
        "Deployment/reranker": "replace",
        "Deployment/docs-embedder": "delete",
        "Deployment/ticket-summarizer-2": "create",
    }
    dev = dirty["environments"][0]
    upd = next(c for c in dev["changes"] if c["action"] == "update")
    assert upd["diff"] == [{"path": "options.temperature", "before": 0.2, "after": 0.3}]
    rep = next(c for c in dev["changes"] if c["action"] == "replace")
    assert "scaling.hardware" in rep["reason"]
    assert [c["action"] for c in dev["changes"]][-1] == "delete", "deletes come last"

    # --ref plans an older commit from git objects; the working tree is untouched
    commit_all(example_repo, "many changes")
    old = plan_json(example_repo, "--env", "dev", "--ref", first)
    assert old["commit"] == first and changes(old, "dev") == {}
    assert not (example_repo / "manifests/deployments/docs-embedder.yaml").exists()


def test_protected_delete_refused_without_allow_delete(example_repo: Path) -> None:
    # production needs approvals to apply; protect dev to test deletes without them
    dev = "metadata: {name: dev}\nspec:\n"
    edit(example_repo, ENVS, dev, dev + "  protected: true\n")
    commit_all(example_repo, "protect dev")
    assert cli(example_repo, "apply", "--env", "dev").code == 0
    os.remove(example_repo / RERANK)
    commit_all(example_repo, "drop reranker")
    plan = plan_json(example_repo, "--env", "dev")
    ch = next(c for c in plan["environments"][0]["changes"] if c["name"] == "reranker")
    assert ch["action"] == "delete" and "--allow-delete" in ch["refused"]
    r = cli(example_repo, "plan", "--env", "dev")
    assert "--allow-delete" in r.out
    r = cli(example_repo, "apply", "--env", "dev")
    assert r.code == 3 and "needs --allow-delete" in r.out
    assert "reranker" in recorded_names(example_repo)
    plan = plan_json(example_repo, "--env", "dev", "--allow-delete")
    ch = next(c for c in plan["environments"][0]["changes"] if c["name"] == "reranker")
    assert ch["refused"] is None
    assert cli(example_repo, "apply", "--env", "dev", "--allow-delete").code == 0
    assert "reranker" not in recorded_names(example_repo)


def test_saved_plan_refused_when_state_moved(example_repo: Path, tmp_path: Path) -> None:
    saved = tmp_path / "plan.json"
    assert cli(example_repo, "plan", "--env", "dev", "--out", str(saved)).code == 0
    assert cli(example_repo, "apply", "--env", "dev").code == 0
    r = cli(example_repo, "apply", "--plan", str(saved))
    assert r.code == 4
    assert "moved" in r.err and "Traceback" not in r.err


def _normalise(text: str, repo: Path) -> str:
    head = git(repo, "rev-parse", "HEAD")
    text = text.replace(head, "<COMMIT>").replace(head[:7], "<SHORT>")
    text = re.sub(r'"created_at": "[^"]+"', '"created_at": "<TIME>"', text)
    text = re.sub(r"hmac-sha256:[0-9a-f]+", "hmac-sha256:<FP>", text)
    text = re.sub(r"run \d{8}T\d{6}Z-[0-9a-f]+", "run <RUN>", text)
    return text


@pytest.mark.parametrize("fmt", ["human", "json", "markdown"])
def test_renderers_golden_and_secrets_redacted(example_repo: Path, fmt: str) -> None:
    env = {"VENDOR_KEY": SECRET, "RECONCILER_FINGERPRINT_KEY": "golden"}
    assert cli(example_repo, "apply", "--env", "dev", env=env).code == 0
    edit(
        example_repo,
        CHAT,
        "temperature: 0.2",
        "temperature: 0.3",
    )
    edit(example_repo, CHAT, "support@1.2.0", "support@1.1.0")
    edit(
        example_repo,
        RERANK,
        "hardware: nvidia-l4",
        "hardware: nvidia-a10g",
    )
    summ = "manifests/deployments/ticket-summarizer.yaml"
    text = (example_repo / summ).read_text()
    (example_repo / summ).write_text(text[: text.index("---")])  # drops intent-classifier
    commit_all(example_repo, "golden changes")
    env["VENDOR_KEY"] = SECRET + "-rotated"
    flag = {"human": [], "json": ["--json"], "markdown": ["--markdown"]}[fmt]
    r = cli(example_repo, "plan", "--env", "dev", *flag, env={**env, "NO_COLOR": "1"})
    assert r.code == 0, r.err
    assert SECRET not in r.out + r.err
    assert "secret VENDOR_KEY" in r.out, "a rotated secret shows as a change"
    got = _normalise(r.out, example_repo)
    golden = GOLDEN / f"plan.{ {'human': 'txt', 'json': 'json', 'markdown': 'md'}[fmt] }"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(got)
    assert got == golden.read_text(), f"{golden.name} differs; UPDATE_GOLDEN=1 to accept"


def test_usage_errors_and_bad_config_are_one_line_not_tracebacks(example_repo: Path) -> None:
    r = cli(example_repo, "plan", "--no-such-flag")
    assert r.code == 2 and "No such option" in r.err and "Traceback" not in r.err
    r = cli(example_repo, "plan", "--env", "prod")
    assert r.code == 1 and "unknown environment 'prod'" in r.err and "production" in r.err
    (example_repo / "reconciler.yaml").write_text("stat: sqlite:///x.db\n")
    r = cli(example_repo, "plan")
    assert r.code == 1 and "reconciler.yaml:1:1: unknown field 'stat'" in r.err
    (example_repo / "reconciler.yaml").unlink()
    r = cli(example_repo, "--state", "redis://x", "status")
    assert r.code == 1 and r.err.startswith("error: unknown state backend")


def test_validate_and_plan_ask_each_provider_to_check_its_instances(example_repo: Path) -> None:
    """Provider.validate runs at plan time (no network): a misconfigured http provider
    is a located manifest error, not a failure halfway through apply."""
    edit(example_repo, "manifests/providers.yaml", "timeoutSeconds: 10", "timeoutSecs: 10")
    for command in ("validate", "plan"):
        r = cli(example_repo, command)
        assert r.code == 1, r.out + r.err
        assert "manifests/deployments/support-chat.yaml:" in r.err
        assert "unknown config key 'timeoutSecs'" in r.err and "Traceback" not in r.err


def test_plan_says_what_the_gate_will_need(example_repo: Path) -> None:
    """Before apply asks: production's approvals (and a closed window, when it is)."""
    r = cli(example_repo, "plan", "--env", "production")
    assert r.code == 0, r.err
    assert "gate: needs 2 approvals (risk high; nothing recorded" in r.out
    r = cli(example_repo, "plan", "--env", "production", "--json")
    gate = json.loads(r.out)["environments"][0]["gate"]
    assert gate["required"] == 2 and gate["risk"] == "high"
