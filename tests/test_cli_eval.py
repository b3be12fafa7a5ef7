"""`reconciler eval` through the CLI with the local provider: a JSONL dataset read at the
commit, repeats, the pass rate against its bound, inconclusive below the minimum sample
and a call budget that stops the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import commit_all
from fakes.deploy_api import FakeDeployApi
from run_world import TOKEN, as_json, cli, make_repo

CASES = [
    {"input": {"question": "refund?"}, "expect": {"contains": ["refund"]}},
    {"input": {"question": "hours?"}, "expect": {"regex": "^Answer briefly"}},
    {"input": {"question": "x"}, "expect": {"equals": "Answer briefly: y"}},
]


def eval_yaml(**spec: object) -> str:
    extra = "".join(f"  {k}: {v}\n" for k, v in spec.items())
    return (
        "apiVersion: reconciler/v1\nkind: Eval\nmetadata: {name: quality}\nspec:\n"
        "  deployment: chat\n  environments: [dev]\n  dataset: evals/golden.jsonl\n" + extra
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    with FakeDeployApi(token=TOKEN) as api:
        repo = make_repo(tmp_path / "repo", api.url)
        (repo / "evals").mkdir()
        (repo / "evals" / "golden.jsonl").write_text("\n".join(json.dumps(c) for c in CASES))
        commit_all(repo, "dataset")
        assert cli(repo, "apply", "--env", "dev").code == 0
        yield repo


def put_eval(repo: Path, **spec: object) -> None:
    (repo / "manifests" / "evals.yaml").write_text(eval_yaml(**spec))
    commit_all(repo, "an eval")


def test_pass_rate_against_its_bound_with_repeats(repo: Path) -> None:
    put_eval(repo, repeat=2, minPassRate=0.6)
    r = cli(repo, "eval", "quality", "--env", "dev", "--json")
    assert r.code == 0, r.out + r.err
    doc = as_json(r)
    assert (doc["calls"], doc["passed"], doc["outcome"]) == (6, 4, "passed")
    assert doc["passRate"] == pytest.approx(4 / 6)
    found = as_json(cli(repo, "executions", "--json"))
    evals = [e for e in found if e["trigger"] == "eval"]
    assert len(evals) == 6 and all(e["digest"] == doc["digest"] for e in evals)

    put_eval(repo, repeat=2, minPassRate=0.9)
    r = cli(repo, "eval", "quality", "--env", "dev")
    assert r.code == 1 and "FAILED (pass rate 0.667 < 0.9)" in r.out


def test_inconclusive_below_the_minimum_sample(repo: Path) -> None:
    put_eval(repo, minPassRate=0.5, minSamples=10)
    r = cli(repo, "eval", "quality", "--env", "dev")
    assert r.code == 3 and "INCONCLUSIVE (3 sample(s), fewer than minSamples 10)" in r.out


def test_a_call_budget_stops_the_run(repo: Path) -> None:
    put_eval(repo, repeat=3, maxCalls=4)
    r = cli(repo, "eval", "quality", "--env", "dev", "--json")
    assert r.code == 1
    doc = as_json(r)
    assert doc["outcome"] == "stopped" and doc["calls"] == 4
    assert doc["reason"] == "budget: maxCalls 4 reached"


def test_a_bad_dataset_line_is_located(repo: Path) -> None:
    (repo / "evals" / "golden.jsonl").write_text('{"input": {}}\n{not json\n')
    put_eval(repo)
    r = cli(repo, "eval", "quality", "--env", "dev")
    assert r.code == 1 and "evals/golden.jsonl:2: not JSON" in r.err
