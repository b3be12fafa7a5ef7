"""`reconciler eval` through the CLI with the local provider (it answers with the prompt
rendered, so a template of `{{question}}` echoes the case): JSON Schema and numeric
cases, a cost budget, and a cost budget refused without a price."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import commit_all, init_repo, run_cli, write_files

SCHEMA = {"type": "object", "required": ["intent"], "properties": {"intent": {"enum": ["a"]}}}
CASES = [
    {"input": {"question": '{"intent": "a"}'}, "expect": {"jsonSchema": SCHEMA}},
    {"input": {"question": '{"intent": "b"}'}, "expect": {"jsonSchema": SCHEMA}},
    {"input": {"question": "41.99"}, "expect": {"number": {"equals": 42, "tolerance": 0.05}}},
    {"input": {"question": "7"}, "expect": {"number": {"max": 5}}},
]
PRICING = "  pricing: {inputPerMillionTokens: 1000000, outputPerMillionTokens: 1000000}\n"


def repo_with(tmp_path: Path, eval_spec: str, *, pricing: bool = True) -> Path:
    repo = init_repo(tmp_path / "repo")
    write_files(
        repo,
        {
            ".gitignore": ".reconciler/\n",
            "evals/golden.jsonl": "\n".join(json.dumps(c) for c in CASES) + "\n",
            "manifests/all.yaml": (
                "apiVersion: reconciler/v1\nkind: Environment\nmetadata: {name: dev}\nspec: {}\n"
                "---\napiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: local}\n"
                "spec: {type: local, environments: [dev]}\n"
                "---\napiVersion: reconciler/v1\nkind: Prompt\nmetadata: {name: echo}\nspec:\n"
                "  versions:\n    - {version: 1.0.0, template: '{{question}}'}\n"
                "---\napiVersion: reconciler/v1\nkind: Deployment\nmetadata: {name: chat}\n"
                "spec:\n  environments: [dev]\n  provider: local\n  model: m\n"
                "  prompt: echo@1.0.0\n" + (PRICING if pricing else "") + "---\n"
                "apiVersion: reconciler/v1\nkind: Eval\nmetadata: {name: shape}\nspec:\n"
                "  deployment: chat\n  environments: [dev]\n  dataset: evals/golden.jsonl\n"
                + eval_spec
            ),
        },
    )
    commit_all(repo, "manifests")
    assert run_cli(["--repo", str(repo), "apply"]).code == 0
    return repo


def test_json_schema_and_numeric_cases_are_judged_with_what_was_measured(
    tmp_path: Path,
) -> None:
    repo = repo_with(tmp_path, "  minPassRate: 0.5\n")
    r = run_cli(["--repo", str(repo), "eval", "shape", "--env", "dev", "--json"])
    assert r.code == 0, r.out + r.err
    doc = json.loads(r.out)
    assert (doc["calls"], doc["passed"], doc["outcome"]) == (4, 2, "passed")
    shown = json.loads(run_cli(["--repo", str(repo), "executions", "--json"]).out)
    judged = {
        e["input"]: next(x for x in e["expectations"] if x["name"] != "succeeded") for e in shown
    }
    assert judged['{"question": "{\\"intent\\": \\"b\\"}"}']["measured"] == (
        "intent: 'b' is not one of ['a']"
    )
    assert judged['{"question": "41.99"}']["ok"] is True
    assert judged['{"question": "7"}'] == {
        "name": "number", "expected": {"max": 5.0}, "measured": 7.0, "ok": False,
    }  # fmt: skip


def test_a_cost_budget_stops_the_run_after_what_the_calls_cost(tmp_path: Path) -> None:
    # at 1 per token (words, for the local provider): the first case is two words in and
    # two out (4), the second the same: 8 spent when the third would start
    repo = repo_with(tmp_path, "  repeat: 3\n  maxCost: 5\n  parallelism: 1\n")
    r = run_cli(["--repo", str(repo), "eval", "shape", "--env", "dev", "--json"])
    doc = json.loads(r.out)
    assert r.code == 1 and (doc["outcome"], doc["calls"], doc["cost"]) == ("stopped", 2, 8.0)
    assert doc["reason"] == "budget: maxCost 5 reached (spent 8)"


def test_a_cost_budget_without_a_price_is_refused_before_any_call(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, "  maxCost: 5\n", pricing=False)
    r = run_cli(["--repo", str(repo), "eval", "shape", "--env", "dev"])
    assert r.code == 1 and "maxCost needs a price" in r.err and "Traceback" not in r.err
    assert json.loads(run_cli(["--repo", str(repo), "executions", "--json"]).out) == []


def test_the_outcome_is_written_as_prometheus_text_for_a_batch_job(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    repo = repo_with(tmp_path, "  minPassRate: 0.5\n")
    out = tmp_path / "metrics" / "eval.prom"
    out.parent.mkdir()
    args = ["eval", "shape", "--env", "dev", "--metrics-file", str(out)]
    assert run_cli(["--repo", str(repo), *args]).code == 0
    samples = {
        (s.name, s.labels.get("outcome")): s.value
        for family in text_string_to_metric_families(out.read_text())
        for s in family.samples
        if s.labels["eval"] == "shape" and s.labels["environment"] == "dev"
    }
    assert samples[("reconciler_eval_pass_rate", None)] == 0.5
    assert samples[("reconciler_eval_min_pass_rate", None)] == 0.5
    assert samples[("reconciler_eval_calls", None)] == 4
    assert samples[("reconciler_eval_outcome", "passed")] == 1
    assert samples[("reconciler_eval_outcome", "failed")] == 0


def test_a_run_for_a_pull_request_named_by_hand_is_advisory(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, "  minPassRate: 0.5\n")
    r = run_cli(["--repo", str(repo), "eval", "shape", "--env", "dev", "--pr", "7", "--json"])
    assert r.code == 0 and json.loads(r.out)["advisory"] is True
