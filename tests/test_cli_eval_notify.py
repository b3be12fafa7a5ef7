"""`reconciler eval` tells the environment's notification targets (its policy of
record's, for the targets that listen) of a run that did not pass, with what failed and
what it measured, and of a pass after one that did not; a pull request's run tells
nobody. The targets are a local apprise `json://` receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import commit_all, init_repo, pull_request_event, run_cli, write_files
from fakes.hooks import HookReceiver

ENV = """apiVersion: reconciler/v1
kind: Environment
metadata: {name: staging}
spec:
  notify: [{urlEnv: RECONCILER_NOTIFY_OPS, on: [eval_failed, eval_recovered]}]
---
apiVersion: reconciler/v1
kind: Provider
metadata: {name: local}
spec: {type: local, environments: [staging]}
---
apiVersion: reconciler/v1
kind: Prompt
metadata: {name: answer}
spec:
  versions:
    - {version: 1.0.0, template: 'Answer briefly: {{question}}'}
---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: chat}
spec: {environments: [staging], provider: local, model: m, prompt: answer@1.0.0}
---
apiVersion: reconciler/v1
kind: Eval
metadata: {name: quality}
spec: {deployment: chat, environments: [staging], dataset: evals/golden.jsonl}
"""


def dataset(word: str) -> str:
    return json.dumps({"input": {"question": "refund?"}, "expect": {"contains": [word]}}) + "\n"


@pytest.fixture
def hooks() -> Iterator[HookReceiver]:
    with HookReceiver() as receiver:
        yield receiver


def test_a_failed_run_and_the_pass_after_it_are_told(tmp_path: Path, hooks: HookReceiver) -> None:
    repo = init_repo(tmp_path / "repo")
    write_files(
        repo,
        {
            ".gitignore": ".reconciler/\n",
            "manifests/all.yaml": ENV,
            "evals/golden.jsonl": dataset("within 30 days"),
        },
    )
    commit_all(repo, "staging, told of its evals")
    env = {"RECONCILER_NOTIFY_OPS": hooks.url()}
    assert run_cli(["--repo", str(repo), "apply"], env=env).code == 0

    def evaluate(extra: dict[str, str] | None = None) -> int:
        # a real process: apprise leaves a worker thread of its own behind
        r = run_cli(
            ["--repo", str(repo), "eval", "quality", "--env", "staging"],
            env={**env, **(extra or {})},
            process=True,
        )
        assert hooks.url().split("//")[1] not in r.out + r.err, "the target URL leaked"
        return r.code

    assert evaluate() == 1
    (notice,) = hooks.wait_for(lambda got: len(got) >= 1)
    assert notice["type"] == "failure"
    assert notice["title"] == "reconciler: eval quality on deployment.chat in staging failed"
    assert "FAILED (pass rate 0.000 < 1.0)" in notice["message"]
    assert (
        '- {"question": "refund?"}: contains: expected \'within 30 days\', measured '
        "'Answer briefly: refund?'" in notice["message"]
    )

    # a pull request's run: advisory, tells nobody
    assert evaluate(pull_request_event(tmp_path, 3)) == 1

    (repo / "evals" / "golden.jsonl").write_text(dataset("briefly"))
    commit_all(repo, "the case the prompt meets")
    assert evaluate() == 0
    got = hooks.wait_for(lambda got: len(got) >= 2)
    assert len(got) == 2, "the advisory run told nobody"
    assert got[1]["type"] == "success"
    assert got[1]["title"] == "reconciler: eval quality on deployment.chat in staging passes again"
    assert evaluate() == 0  # a pass after a pass is not news
    assert len(hooks.received()) == 2
