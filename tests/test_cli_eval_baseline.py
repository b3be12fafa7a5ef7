"""An eval's bar relative to what another environment runs now, through the CLI (the
local provider answers by rendering the prompt): compared with the latest run of the
same eval on the digest applied there; never measured is inconclusive; the same digest
there has nothing to trail."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import commit_all, init_repo, run_cli, write_files

ENVS = "".join(
    f"---\napiVersion: reconciler/v1\nkind: Environment\nmetadata: {{name: {e}}}\n"
    for e in ("staging", "production")
)
CASES = [("q1", "briefly"), ("q2", "briefly"), ("q3", "kindly")]


def deployment(staging: str, production: str) -> str:
    return (
        "apiVersion: reconciler/v1\nkind: Deployment\nmetadata: {name: chat}\nspec:\n"
        "  environments: [staging, production]\n  provider: local\n  model: m\n"
        f"  prompt: answer@{production}\n  overrides:\n    staging: {{prompt: answer@{staging}}}\n"
    )


def world(tmp_path: Path, staging: str, production: str) -> Path:
    repo = init_repo(tmp_path / "repo")
    write_files(
        repo,
        {
            ".gitignore": ".reconciler/\n",
            "evals/golden.jsonl": "".join(
                json.dumps({"input": {"question": q}, "expect": {"contains": [w]}}) + "\n"
                for q, w in CASES
            ),
            "manifests/all.yaml": ENVS
            + "---\napiVersion: reconciler/v1\nkind: Provider\nmetadata: {name: local}\n"
            "spec: {type: local, environments: [staging, production]}\n"
            "---\napiVersion: reconciler/v1\nkind: Prompt\nmetadata: {name: answer}\nspec:\n"
            "  versions:\n"
            "    - {version: 1.0.0, template: 'Answer briefly: {{question}}'}\n"
            "    - {version: 2.0.0, template: 'Answer kindly: {{question}}'}\n"
            "---\napiVersion: reconciler/v1\nkind: Eval\nmetadata: {name: quality}\nspec:\n"
            "  deployment: chat\n  environments: [staging, production]\n"
            "  dataset: evals/golden.jsonl\n  minPassRate: 0.3\n"
            "  baseline: {environment: production, maxDrop: 0.1}\n",
            "manifests/deployment.yaml": deployment(staging, production),
        },
    )
    commit_all(repo, "an eval held to what production runs")
    assert run_cli(["--repo", str(repo), "apply"]).code == 0
    return repo


def evaluate(repo: Path, env: str) -> tuple[int, dict[str, object]]:
    r = run_cli(["--repo", str(repo), "eval", "quality", "--env", env, "--json"])
    assert "Traceback" not in r.err, r.err
    return r.code, json.loads(r.out)


def test_a_change_that_falls_behind_production_fails_though_it_clears_the_bar(
    tmp_path: Path,
) -> None:
    # staging runs a kinder prompt (1 case in 3), production the brief one (2 in 3)
    repo = world(tmp_path, "2.0.0", "1.0.0")
    code, doc = evaluate(repo, "staging")
    assert code == 3 and doc["outcome"] == "inconclusive"
    assert "no run of it on what production runs" in str(doc["reason"])

    code, doc = evaluate(repo, "production")  # measures production itself
    assert (code, doc["outcome"]) == (0, "passed")
    assert doc["baseline"] == {
        "environment": "production", "digest": doc["digest"], "rate": None, "same": True,
    }  # fmt: skip

    code, doc = evaluate(repo, "staging")
    assert (code, doc["outcome"], doc["passRate"]) == (1, "failed", 1 / 3)
    assert doc["reason"] == (
        "deployment.chat fell behind production on eval 'quality': pass rate 0.333 < 0.667 "
        f"({str(doc['baseline']['digest']).removeprefix('sha256:')[:12]}) - maxDrop 0.1"  # type: ignore[index]
    )
    human = run_cli(["--repo", str(repo), "eval", "quality", "--env", "staging"]).out
    assert "  baseline production: " in human and "pass rate 0.667" in human


def test_nothing_applied_in_the_baseline_is_nothing_to_trail(tmp_path: Path) -> None:
    repo = world(tmp_path, "2.0.0", "1.0.0")
    text = (repo / "manifests" / "deployment.yaml").read_text()
    (repo / "manifests" / "deployment.yaml").write_text(
        text.replace("[staging, production]", "[staging]")
    )
    text = (repo / "manifests" / "all.yaml").read_text()
    (repo / "manifests" / "all.yaml").write_text(
        text.replace("[staging, production]\n  dataset", "[staging]\n  dataset")
    )
    commit_all(repo, "chat leaves production")
    assert run_cli(["--repo", str(repo), "apply", "--allow-delete"]).code == 0
    code, doc = evaluate(repo, "staging")
    assert (code, doc["outcome"]) == (0, "passed")
    assert doc["baseline"] == {"environment": "production", "digest": None, "rate": None}
