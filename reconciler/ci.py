"""What a CI job tells us about itself: the commit, the pull request, the step summary.

On a GitHub `pull_request` event `GITHUB_SHA` is a temporary merge commit; the commit
reviewers approved is `pull_request.head.sha` in the event payload. On `push` the
commit is `GITHUB_SHA`. GitLab merge-request pipelines give `CI_MERGE_REQUEST_IID`; in
a merged-results (or merge-train) pipeline `CI_COMMIT_SHA` is likewise a temporary
merge commit, and the MR's head is `CI_MERGE_REQUEST_SOURCE_BRANCH_SHA` (set only
there).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: GitLab pipelines whose CI_COMMIT_SHA is a temporary merge commit, not the MR head.
MERGED_RESULTS = frozenset({"merged_result", "merge_train"})


@dataclass(frozen=True)
class CiContext:
    #: The commit to judge or apply (None outside CI).
    commit: str | None = None
    pull_request: int | None = None
    #: The pull request's head (what reviews point at), when on a pull-request event.
    head_sha: str | None = None


def _event(env: Mapping[str, str]) -> dict[str, Any]:
    path = env.get("GITHUB_EVENT_PATH")
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def detect(env: Mapping[str, str]) -> CiContext:
    if env.get("GITHUB_ACTIONS") == "true":
        pr = _event(env).get("pull_request")
        if isinstance(pr, dict) and isinstance(pr.get("number"), int):
            head = pr.get("head")
            sha = head.get("sha") if isinstance(head, dict) else None
            sha = sha if isinstance(sha, str) else None
            return CiContext(commit=sha, pull_request=pr["number"], head_sha=sha)
        return CiContext(commit=env.get("GITHUB_SHA") or None)
    if env.get("GITLAB_CI") == "true":
        return _gitlab(env)
    return CiContext()


def _gitlab(env: Mapping[str, str]) -> CiContext:
    iid = env.get("CI_MERGE_REQUEST_IID")
    number = int(iid) if iid and iid.isdigit() else None
    source_head = env.get("CI_MERGE_REQUEST_SOURCE_BRANCH_SHA") or None
    if number is not None and source_head is not None:
        # a merged-results pipeline: judge the MR's head, never the merge commit
        return CiContext(commit=source_head, pull_request=number, head_sha=source_head)
    if env.get("CI_MERGE_REQUEST_EVENT_TYPE") in MERGED_RESULTS:
        # the head is not named, and CI_COMMIT_SHA is the merge commit: name neither
        return CiContext(pull_request=number)
    commit = env.get("CI_COMMIT_SHA") or None
    return CiContext(
        commit=commit, pull_request=number, head_sha=commit if number is not None else None
    )


def actor(env: Mapping[str, str]) -> str | None:
    """Who started the CI job, as the forge names them (None outside CI)."""
    if env.get("GITHUB_ACTIONS") == "true":
        return env.get("GITHUB_ACTOR") or None
    if env.get("GITLAB_CI") == "true":
        return env.get("GITLAB_USER_LOGIN") or None
    return None


def append_step_summary(env: Mapping[str, str], markdown: str) -> None:
    """Add to the GitHub Actions job summary; a no-op anywhere else."""
    path = env.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown.rstrip("\n") + "\n\n")
    except OSError:  # a summary is a courtesy; never fail the job for it
        pass
