"""Issue 13, the property: for random secret values and random live objects that embed
them anywhere (strings, lists, nested maps, keys, ids), no command's stdout, stderr or
JSON shows a secret value.

The commands run in this process (`reconciler.cli.main`, the real CLI, many times per
example; a child process each would take minutes), against the fake deployment API on
127.0.0.1 and a fresh SQLite state per example. The redaction registry is emptied
before each example, so every command must register what it renders.
"""

from __future__ import annotations

import io
import json
import os
import string
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from conftest import commit_all, init_repo, write_files
from fakes.deploy_api import FakeDeployApi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inprocess import command_tree_built_once
from test_secrets_masked import DEPLOYMENT, ENV, PROVIDER, strings

from reconciler import cli, log

# No whitespace or parentheses (a value spanning "(sensitive)" and its neighbours
# could not be told from a leak); quotes, backslashes and non-ASCII test escaping.
ALPHABET = string.ascii_letters + string.digits + "-_.~+/=!@#$%^&*:;,?<>[]{}|\"'\\`éß密ø"
ASCII = string.ascii_letters + string.digits + "-_.~+/=!@#$%^&*:;,?<>[]{}|\"'\\`"


def secret_text(alphabet: str) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=8, max_size=20).filter(
        lambda s: s not in log.REDACTED
    )


@st.composite
def scenario(draw: st.DrawFn) -> dict[str, Any]:
    secrets = {
        "VENDOR_KEY": draw(secret_text(ALPHABET)),
        "REGISTRY_TOKEN": draw(secret_text(ASCII)),  # an HTTP header carries it
        "GITHUB_TOKEN": draw(secret_text(ALPHABET)),
        "RECONCILER_FINGERPRINT_KEY": draw(secret_text(ALPHABET)),
    }
    values = sorted(set(secrets.values()))
    embedded = st.builds(
        lambda a, s, b: a + s + b,
        st.text(max_size=4),
        st.sampled_from(values),
        st.text(max_size=4),
    )
    leaf = st.one_of(embedded, st.text(max_size=6), st.integers(), st.booleans(), st.none())
    tree = st.recursive(
        leaf,
        lambda kids: (
            st.lists(kids, max_size=3)
            | st.dictionaries(st.one_of(embedded, st.text(max_size=6)), kids, max_size=3)
        ),
        max_leaves=8,
    )
    env_value = st.one_of(embedded, st.sampled_from(values), tree)
    fields = {
        "model": tree,
        "options": tree,
        "labels": tree,
        "endpoint": tree,
        "env": st.dictionaries(
            st.one_of(st.sampled_from(["VENDOR_KEY", "LOG_LEVEL"]), embedded),
            env_value,
            max_size=4,
        ),
    }
    live = {k: draw(v) for k, v in fields.items() if draw(st.booleans())}
    return {
        "secrets": secrets,
        "live": live,
        "id": draw(embedded),
        "shape": draw(st.sampled_from(["map", "list"])),
    }


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """The process environment a command reads, CI variables removed."""
    saved = dict(os.environ)
    try:
        for k in list(os.environ):
            if k.startswith(("GITHUB_", "GITLAB_", "CI", "RECONCILER_")):
                del os.environ[k]
        os.environ.update(values)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with redirect_stdout(out), redirect_stderr(err), command_tree_built_once():
        try:
            cli.main(list(args))
        except SystemExit as e:
            code = e.code
    return int(code or 0), out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def api() -> Iterator[FakeDeployApi]:
    with FakeDeployApi() as server:  # any token: it changes with every example
        yield server


@pytest.fixture(scope="module")
def repo(api: FakeDeployApi, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = init_repo(tmp_path_factory.mktemp("prop") / "repo")
    write_files(
        root,
        {
            "manifests/env.yaml": ENV,
            "manifests/provider.yaml": PROVIDER % api.url,
            "manifests/chat.yaml": DEPLOYMENT % {"name": "chat", "endpoint": "/chat"},
            ".gitignore": ".reconciler/\n",
        },
    )
    commit_all(root, "one deployment")
    return root


COMMANDS = [
    ("drift",),
    ("drift", "--json"),
    ("status",),
    ("status", "--json"),
    ("plan",),
    ("plan", "--json"),
    ("history", "--json"),
    ("--log-format", "json", "-vv", "apply", "--heal"),
    ("history",),
]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=scenario())
def test_no_command_shows_a_secret(
    api: FakeDeployApi, repo: Path, tmp_path: Path, case: dict[str, Any]
) -> None:
    log.forget_secrets()
    secrets = list(case["secrets"].values())
    state = tmp_path / f"state-{os.urandom(6).hex()}.db"
    if api.get("deployments", "dev", "chat") is not None:
        api.remove("deployments", "dev", "chat")
    api.env_shape = case["shape"]
    api.id_prefix = case["id"]
    with environment(case["secrets"]):
        code, out, err = run("--repo", str(repo), "--state", f"sqlite:///{state}", "apply")
        assert code == 0, out + err
        log.forget_secrets()
        api.tamper("deployments", "dev", "chat", **case["live"])
        for args in COMMANDS:
            log.forget_secrets()
            code, out, err = run("--repo", str(repo), "--state", f"sqlite:///{state}", *args)
            assert "Traceback" not in out + err, (args, err)
            shown = [s for s in secrets if s in out + err]
            assert not shown, (args, shown, out, err)
            if "--json" in args:
                texts = list(strings(json.loads(out)))
                assert not [s for s in secrets for t in texts if s in t], (args, out)
