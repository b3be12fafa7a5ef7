"""Where `serve` and `agent` may listen: beyond loopback only behind the token, unless
`--insecure-no-token` names the exposure (then a warning says what is exposed). Through
the CLI as users run it; nothing here listens beyond loopback: the addresses tried are
refused before binding, or are documentation addresses (192.0.2.0/24, RFC 5737) that
no interface has, so getting past the check shows as "cannot listen on".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from agent_world import AgentProcess, Remote, environment
from conftest import run_cli
from dashboard_server import start
from ruamel.yaml import YAML

from reconciler.dashboard.security import check_listening, is_loopback
from reconciler.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "listening-token-3c4d5e"
NOWHERE = "192.0.2.1"  # TEST-NET-1: on no interface, so binding it fails after the check
REFUSED = re.compile(r"^error: refusing to listen on (\S+) without a token: ")


def _agent_remote(tmp_path: Path) -> Remote:
    remote = Remote(tmp_path / "origin")
    remote.push({"manifests/env.yaml": environment("dev", "  description: d\n")}, "dev")
    return remote


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", NOWHERE, "2001:db8::1", "dashboard.example", "ip6-localhost"]
)
def test_serve_refuses_a_non_loopback_address_without_a_token(
    example_repo: Path, host: str
) -> None:
    r = run_cli(["--repo", str(example_repo), "serve", "--host", host, "--port", "0"], timeout=30)
    assert r.code == 1, r.err
    first = r.err.splitlines()[0]
    assert REFUSED.match(first) and host in first, r.err
    assert "RECONCILER_DASHBOARD_TOKEN" in first and "--insecure-no-token" in first
    assert "anyone who can reach the port would read every page" in r.err
    assert "dashboard on" not in r.err and "Traceback" not in r.err


def test_the_agent_refuses_before_cloning_or_listening(tmp_path: Path) -> None:
    remote = _agent_remote(tmp_path)
    clone = tmp_path / "clone"
    for host in ("0.0.0.0", NOWHERE):
        r = run_cli(
            [
                "--state", f"sqlite:///{tmp_path / 'state.db'}",
                "agent", "--clone", str(clone), "--host", host, "--port", "0",
            ],
            env={"RECONCILER_REMOTE": str(remote.bare)},
            timeout=30,
        )  # fmt: skip
        assert r.code == 1, r.err
        assert REFUSED.match(r.err.splitlines()[0]), r.err
        assert "/metrics and every page" in r.err
        assert not clone.exists()  # nothing was done before the refusal


def test_with_the_token_serve_and_agent_go_on_to_listen(tmp_path: Path, example_repo: Path) -> None:
    env = {"RECONCILER_DASHBOARD_TOKEN": TOKEN}
    r = run_cli(["--repo", str(example_repo), "serve", "--host", NOWHERE, "--port", "0"], env=env)
    assert r.code == 1 and r.err.startswith(f"error: cannot listen on {NOWHERE}:0"), r.err
    assert "refusing" not in r.err and "without a token" not in r.err
    remote = _agent_remote(tmp_path)
    r = run_cli(
        [
            "--state", f"sqlite:///{tmp_path / 'state.db'}",
            "agent", "--clone", str(tmp_path / "clone"), "--host", NOWHERE, "--port", "0",
        ],
        env={**env, "RECONCILER_REMOTE": str(remote.bare)},
    )  # fmt: skip
    assert r.code == 1 and f"error: cannot listen on {NOWHERE}:0" in r.err, r.err
    assert "refusing" not in r.err and TOKEN not in r.err
    assert (tmp_path / "clone/.git").is_dir()  # it went on: cloned, then could not bind


def test_insecure_no_token_goes_on_and_warns_what_is_exposed(
    tmp_path: Path, example_repo: Path
) -> None:
    r = run_cli(
        [
            "--repo", str(example_repo), "--log-format", "json",
            "serve", "--host", NOWHERE, "--port", "0", "--insecure-no-token",
        ]
    )  # fmt: skip
    assert r.code == 1 and f"error: cannot listen on {NOWHERE}:0" in r.err, r.err
    warnings = [
        json.loads(line) for line in r.err.splitlines() if line.startswith('{"event": "listening')
    ]
    assert [w["level"] for w in warnings] == ["warning"], r.err
    assert warnings[0]["event"] == (
        f"listening on {NOWHERE} without a token (--insecure-no-token): anyone who can reach "
        "the port reads every page and /api/ document (environments, runs and their field "
        "diffs, plans, approvers, drift)"
    )
    remote = _agent_remote(tmp_path)
    r = run_cli(
        [
            "--state", f"sqlite:///{tmp_path / 'state.db'}", "--log-format", "json",
            "agent", "--clone", str(tmp_path / "clone"), "--host", NOWHERE, "--port", "0",
            "--no-dashboard", "--insecure-no-token",
        ],
        env={"RECONCILER_REMOTE": str(remote.bare)},
    )  # fmt: skip
    assert r.code == 1 and f"error: cannot listen on {NOWHERE}:0" in r.err, r.err
    assert "without a token (--insecure-no-token): anyone who can reach the port reads " \
        "/metrics\"" in r.err  # fmt: skip


def test_loopback_needs_no_token_and_warns_nothing(example_repo: Path) -> None:
    for host in ("127.0.0.1", "127.0.0.2"):
        server = start(example_repo, {}, "--host", host)
        try:
            assert server.url.startswith(f"http://{host}:")
            assert server.get("/api/overview").status_code == 200
        finally:
            err = server.stop()
        assert "without a token" not in err and "refusing" not in err


def test_the_agents_token_guards_metrics_too(tmp_path: Path) -> None:
    remote = _agent_remote(tmp_path)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    env = {"RECONCILER_DASHBOARD_TOKEN": TOKEN}
    with AgentProcess(remote, tmp_path / "clone", state, "--no-dashboard", env=env) as agent:
        assert agent.get("/healthz").status_code in (200, 503)
        assert agent.get("/metrics").status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.get(agent.base + "/metrics", headers=auth, timeout=10)
        assert r.status_code == 200 and "reconciler_" in r.text
        assert TOKEN not in agent.output()


def test_what_counts_as_loopback() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.0.0.5", "fe80::1", "localhost.example", "host"):
        assert not is_loopback(host), host
    assert check_listening("::1", None, insecure_no_token=False, what="x") is None
    assert check_listening("::", "t", insecure_no_token=False, what="x") is None
    with pytest.raises(ConfigError, match="refusing to listen on every interface"):
        check_listening("", None, insecure_no_token=False, what="x")


# -- the container ---------------------------------------------------------------------


def _instruction(dockerfile: str, name: str) -> list[str]:
    """The exec-form (JSON array) arguments of the last NAME instruction."""
    found = re.findall(rf"^{name} (\[.*\])$", dockerfile, flags=re.MULTILINE)
    assert found, f"no exec-form {name} in the Dockerfile"
    args = json.loads(found[-1])
    assert isinstance(args, list) and all(isinstance(a, str) for a in args)
    return args


def test_the_containers_default_command_requires_the_token(tmp_path: Path) -> None:
    """The Dockerfile's ENTRYPOINT + CMD, run as they are (there is no docker here):
    refused without the token, and nothing in them waives it."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    entrypoint = _instruction(dockerfile, "ENTRYPOINT")
    cmd = _instruction(dockerfile, "CMD")
    assert entrypoint[:3] == ["tini", "--", "reconciler"]
    assert "--insecure-no-token" not in entrypoint + cmd
    host = cmd[cmd.index("--host") + 1]
    assert not is_loopback(host)
    r = run_cli([*entrypoint[3:], *cmd], cwd=tmp_path, timeout=30)
    assert r.code == 1 and REFUSED.match(r.err.splitlines()[0]), r.err

    compose = YAML(typ="safe").load((ROOT / "docs/agent-compose.yaml").read_text())
    agent = compose["services"]["agent"]
    assert agent["command"] == cmd
    assert agent["environment"]["RECONCILER_DASHBOARD_TOKEN"].startswith(
        "${RECONCILER_DASHBOARD_TOKEN:?"
    )
    example = (ROOT / "docs/agent.env.example").read_text()
    assert re.search(r"^RECONCILER_DASHBOARD_TOKEN=\S+", example, flags=re.MULTILINE)
