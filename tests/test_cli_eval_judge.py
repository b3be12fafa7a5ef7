"""A judge that is itself a deployment, pinned to its digest, through the CLI. The local
provider answers by rendering the prompt, so the judge's "verdict" is its template
filled with the answer: it passes an answer exactly when the answer says "briefly"."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import commit_all, init_repo, run_cli, write_files

PIN = "sha256:" + "0" * 64
CASES = [
    {"input": {"question": "q1"}, "expect": {"judge": "is it brief?"}},
    {"input": {"question": "q2"}, "expect": {"judge": "is it brief?", "contains": ["q2"]}},
]


def manifests(pin: str, template: str = "Answer briefly: {{question}}") -> str:
    return (
        "apiVersion: reconciler/v1\nkind: Environment\nmetadata: {name: staging}\n"
        "---\napiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: local}\n"
        "spec: {type: local, environments: [staging]}\n"
        "---\napiVersion: reconciler/v1\nkind: Prompt\nmetadata: {name: answer}\nspec:\n"
        f"  versions:\n    - {{version: 1.0.0, template: '{template}'}}\n"
        "---\napiVersion: reconciler/v1\nkind: Prompt\nmetadata: {name: grade}\nspec:\n"
        "  versions:\n    - {version: 1.0.0, template: '{{criteria}} {{answer}}'}\n"
        "---\napiVersion: reconciler/v1\nkind: Deployment\nmetadata: {name: chat}\nspec:\n"
        "  environments: [staging]\n  provider: local\n  model: m\n  prompt: answer@1.0.0\n"
        "---\napiVersion: reconciler/v1\nkind: Deployment\nmetadata: {name: grader}\nspec:\n"
        "  environments: [staging]\n  provider: local\n  model: judge-m\n"
        "  prompt: grade@1.0.0\n"
        "---\napiVersion: reconciler/v1\nkind: Eval\nmetadata: {name: brief}\nspec:\n"
        "  deployment: chat\n  environments: [staging]\n  dataset: evals/golden.jsonl\n"
        "  minPassRate: 1.0\n"
        f"  judge: {{deployment: grader, digest: '{pin}', pass: {{contains: [briefly]}}}}\n"
    )


def world(tmp_path: Path) -> Path:
    repo = init_repo(tmp_path / "repo")
    write_files(
        repo,
        {
            ".gitignore": ".reconciler/\n",
            "evals/golden.jsonl": "".join(json.dumps(c) + "\n" for c in CASES),
            "manifests/all.yaml": manifests(PIN),
        },
    )
    commit_all(repo, "an eval graded by a judge")
    assert run_cli(["--repo", str(repo), "apply"]).code == 0
    return repo


def evaluate(repo: Path) -> tuple[int, str, str]:
    r = run_cli(["--repo", str(repo), "eval", "brief", "--env", "staging", "--json"])
    assert "Traceback" not in r.err, r.err
    return r.code, r.out, r.err


def test_a_pinned_judge_grades_each_answer_and_a_moved_judge_grades_nothing(
    tmp_path: Path,
) -> None:
    repo = world(tmp_path)
    code, _, err = evaluate(repo)  # the pin is not what runs: nothing is called
    assert code == 1 and "the eval pins sha256:0000" in err, err
    found = re.search(r"runs (sha256:[0-9a-f]{64}) in 'staging'", err)
    assert found, err
    assert json.loads(run_cli(["--repo", str(repo), "executions", "--json"]).out) == []

    (repo / "manifests" / "all.yaml").write_text(manifests(found.group(1)))
    commit_all(repo, "pin the judge")
    code, out, err = evaluate(repo)
    doc = json.loads(out)
    assert (code, doc["outcome"], doc["calls"], doc["passed"]) == (0, "passed", 2, 2), err
    shown = json.loads(run_cli(["--repo", str(repo), "executions", "--json"]).out)
    graded = [e for e in shown if e["deployment"] == "grader"]
    assert len(graded) == 2 and all("eval_run" not in e for e in graded)  # not evidence
    judged = [e for e in shown if e["deployment"] == "chat"]
    verdicts = [x for e in judged for x in e["expectations"] if x["name"] == "judge"]
    assert verdicts and all(
        v["ok"] and v["expected"] == "is it brief?" and "Answer briefly" in v["measured"]
        for v in verdicts
    )


def test_an_answer_the_judge_does_not_pass_fails_the_case(tmp_path: Path) -> None:
    repo = world(tmp_path)
    _, _, err = evaluate(repo)
    pin = re.search(r"runs (sha256:[0-9a-f]{64}) in 'staging'", err)
    assert pin, err
    (repo / "manifests" / "all.yaml").write_text(manifests(pin.group(1), "Answer: {{question}}"))
    commit_all(repo, "a terser prompt the judge will not call brief")
    assert run_cli(["--repo", str(repo), "apply"]).code == 0
    code, out, _ = evaluate(repo)
    doc = json.loads(out)
    assert (code, doc["outcome"], doc["passed"]) == (1, "failed", 0)


def test_a_case_asking_a_judge_needs_the_eval_to_declare_one(tmp_path: Path) -> None:
    repo = world(tmp_path)
    text = (repo / "manifests" / "all.yaml").read_text()
    (repo / "manifests" / "all.yaml").write_text(text[: text.index("  judge:")])
    commit_all(repo, "no judge")
    code, _, err = evaluate(repo)
    assert code == 1 and "a case asks a judge ('is it brief?')" in err


def test_a_check_cannot_ask_a_judge(tmp_path: Path) -> None:
    repo = world(tmp_path)
    (repo / "manifests" / "check.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Check\nmetadata: {name: smoke}\nspec:\n"
        "  deployment: chat\n  environments: [staging]\n  requests:\n"
        "    - input: {question: q}\n      expect: {judge: 'is it brief?'}\n"
    )
    commit_all(repo, "a check asking a judge")
    r = run_cli(["--repo", str(repo), "validate"])
    assert r.code != 0 and "Traceback" not in r.err
    assert re.search(r"manifests/check\.yaml:9:\d+: a check cannot ask a judge", r.out + r.err), (
        r.out + r.err
    )
