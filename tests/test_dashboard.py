"""The dashboard's API and guard against the real server, and its parts in process:
every /api/ document is the CLI's --json document; the token, Host check and headers;
the refresher's caching and failure handling; the overview's matrix and verdicts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import commit_all, run_cli, write_files
from dashboard_fixture import HAND_EDITED_SECRET, REGISTRY_TOKEN, SECRET, DashboardRepo
from dashboard_server import Server, start

from reconciler.config import ApprovalsConfig, load_settings
from reconciler.dashboard.links import forge_links
from reconciler.dashboard.refresh import Refresher
from reconciler.drift import DriftReport
from reconciler.engine.apply import ApplyRequest
from reconciler.engine.apply import apply as run_apply
from reconciler.engine.live import LiveReport
from reconciler.engine.overview import collect_overview
from reconciler.engine.plan import build_plan
from reconciler.instances import InstanceKey
from reconciler.plan import Plan
from reconciler.providers import HealthStatus
from reconciler.session import Session
from reconciler.state import open_state
from reconciler.state.base import RunRecord
from reconciler.views import overview as overview_view

pytest_plugins = ["dashboard_site"]  # the served fixture repo (`site`)
TOKEN = "dashboard-token-0a9f8e"
#: A Wednesday afternoon: the example's production window (deny from Friday 17:00 to
#: Monday 09:00, Europe/Berlin) is open.
WEDNESDAY = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)


def cli_json(d: DashboardRepo, *args: str, expect: int = 0) -> Any:
    return json.loads(d.cli(*args, "--json", expect=expect))


def without(doc: Any, *keys: str) -> Any:
    """`doc` with `keys` removed at any depth (times that depend on when it was made)."""
    if isinstance(doc, dict):
        return {k: without(v, *keys) for k, v in doc.items() if k not in keys}
    if isinstance(doc, list):
        return [without(v, *keys) for v in doc]
    return doc


# -- the API is the CLI ----------------------------------------------------------------


@pytest.mark.slow
def test_every_api_document_is_the_cli_document(site: tuple[DashboardRepo, Server]) -> None:
    d, server = site
    times = ("generated_at", "live_as_of", "verdicts_as_of", "created_at")
    runs = ("next_run", "next_run_local", "next_runs")
    pairs: list[tuple[str, tuple[str, ...], int, tuple[str, ...]]] = [
        ("/api/overview", ("overview",), 0, times),
        ("/api/status", ("status",), 0, runs),
        ("/api/schedules", ("schedules",), 0, runs),
        ("/api/history", ("history",), 0, ()),
        (
            "/api/history?env=production&limit=1",
            ("history", "--env", "production", "--limit", "1"),
            0,
            (),
        ),
        ("/api/drift", ("drift",), 2, ()),
        ("/api/plan", ("plan", "--ref", "main"), 0, times + runs),
    ]
    rollback = next(r for r in d.history() if r["trigger"] == "rollback")
    pairs.append((f"/api/runs/{rollback['id']}", ("show", rollback["id"]), 0, ()))
    for path, args, code, volatile in pairs:
        r = server.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == "application/json"
        for secret in (SECRET, HAND_EDITED_SECRET, REGISTRY_TOKEN):
            assert secret not in r.text
        served, printed = r.json(), cli_json(d, *args, expect=code)
        assert without(served, *volatile) == without(printed, *volatile), path
    overview = server.get("/api/overview").json()
    prod = next(e for e in overview["environments"] if e["name"] == "production")
    assert prod["blocked"] and prod["pending"]["update"] == 2
    assert prod["last_run"]["approvers"] == ["alice", "carol"]


def test_api_errors_are_json(site: tuple[DashboardRepo, Server]) -> None:
    _, server = site
    assert server.get("/api/runs/nope").status_code == 404
    assert server.get("/api/runs/nope").json() == {"error": "no such run"}
    assert server.get("/api/history?limit=zero").status_code == 400
    assert server.get("/runs/nope").status_code == 404


def test_read_only_and_headers(site: tuple[DashboardRepo, Server]) -> None:
    _, server = site
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert httpx.request(method, server.url + "api/overview").status_code == 405
    r = server.get("/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src" not in csp  # no JavaScript at all
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "server" not in r.headers
    assert "<script" not in r.text


def test_loopback_server_refuses_foreign_host_headers(site: tuple[DashboardRepo, Server]) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 gets nothing."""
    _, server = site
    assert server.get("/api/overview", headers={"Host": "evil.example"}).status_code == 400
    assert server.get("/api/overview", headers={"Host": "localhost:1"}).status_code == 200


# -- the token -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(site: tuple[DashboardRepo, Server]) -> Any:
    d, _ = site
    server = start(d.repo, {**d.env, "RECONCILER_DASHBOARD_TOKEN": TOKEN}, "--refresh", "1h")
    yield server
    assert TOKEN not in server.stop()


def test_token_guards_everything_but_healthz(guarded: Server) -> None:
    assert guarded.get("/healthz").status_code == 200
    for path in ("/", "/matrix", "/api/overview", "/static/style.css", "/api/history"):
        r = guarded.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert "Token" in guarded.get("/").text  # a person gets the sign-in form
    assert (
        guarded.get("/api/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    ok = guarded.get("/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["format_version"] == 1


def test_login_sets_a_cookie_that_is_not_the_token(guarded: Server) -> None:
    url = guarded.url + "login"
    bad = httpx.post(url, data={"token": "wrong", "next": "/matrix"})
    assert bad.status_code == 401 and "not right" in bad.text
    r = httpx.post(url, data={"token": TOKEN, "next": "//evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert TOKEN not in cookie
    jar = httpx.Cookies()
    jar.extract_cookies(r)
    page = httpx.get(guarded.url + "matrix", cookies=jar)
    assert page.status_code == 200 and "Promotion matrix" in page.text
    assert TOKEN not in page.text


# -- the refresher, in process ---------------------------------------------------------


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def applied_repo(example_repo: Path) -> Path:
    assert run_cli(["--repo", str(example_repo), "apply", "--env", "dev"]).code == 0
    return example_repo


def test_refresher_rebuilds_only_when_something_moved(applied_repo: Path) -> None:
    clock = Clock(datetime.now(UTC))
    r = Refresher(
        Session.start(load_settings(applied_repo)), interval=60, verdicts=lambda p: {}, clock=clock
    )
    first = r.refresh()
    assert first.live is not None and first.live.at == clock.at
    clock.at += timedelta(seconds=5)
    assert r.refresh() is first  # nothing moved, live reads not due

    p = applied_repo / "manifests/deployments/support-chat.yaml"
    p.write_text(p.read_text().replace("maxTokens: 400", "maxTokens: 500"))
    head = commit_all(applied_repo, "longer answers")
    second = r.refresh()
    assert second is not first and second.commit == head
    assert second.plan.environments[0].counts()["update"] == 1
    assert second.live is not None and second.live.at == clock.at  # state or head moved

    assert run_cli(["--repo", str(applied_repo), "apply", "--env", "dev"]).code == 0
    third = r.refresh()
    assert third.history.rows[0].run.commit == head
    assert third.plan.environments[0].counts()["update"] == 0

    clock.at += timedelta(seconds=61)
    fourth = r.refresh()
    assert fourth is not third and fourth.live is not None and fourth.live.at == clock.at


def test_refresher_redoes_schedules_when_a_fire_time_passed(applied_repo: Path) -> None:
    clock = Clock(datetime.now(UTC))
    r = Refresher(
        Session.start(load_settings(applied_repo)),
        interval=3600,
        verdicts=lambda p: {},
        clock=clock,
    )
    first = r.refresh()
    until = first.schedules.valid_until
    assert until is not None  # dev's ticket-digest runs every 30 minutes
    clock.at = until
    second = r.refresh()
    assert second is not first
    assert second.schedules.rows[0].next_runs[0] > until


def test_refresher_keeps_the_last_good_snapshot(applied_repo: Path) -> None:
    r = Refresher(Session.start(load_settings(applied_repo)), verdicts=lambda p: {})
    good = r.refresh()
    write_files(applied_repo, {"manifests/broken.yaml": "kind: Deployment\nmetadata: {}\n"})
    commit_all(applied_repo, "broken")
    assert r.refresh_safely() is good
    assert r.error is not None and "manifests/broken.yaml:" in r.error
    (applied_repo / "manifests/broken.yaml").unlink()
    commit_all(applied_repo, "fixed")
    assert r.refresh_safely() is not good and r.error is None


def test_verdicts_are_a_parameter_and_fail_closed(applied_repo: Path) -> None:
    settings = load_settings(applied_repo)

    def frozen(plan: Plan) -> dict[str, list[str]]:
        return {"production": ["frozen for the holidays"]}

    snap = Refresher(
        Session.start(settings), verdicts=frozen, live=False, clock=Clock(WEDNESDAY)
    ).refresh()
    prod = next(e for e in snap.overview.environments if e.name == "production")
    assert prod.blocked == ["frozen for the holidays"]
    assert snap.overview.verdicts_as_of is not None

    def broken(plan: Plan) -> dict[str, list[str]]:
        from reconciler.errors import ApprovalSourceError

        raise ApprovalSourceError("forge unreachable")

    snap = Refresher(
        Session.start(settings), verdicts=broken, live=False, clock=Clock(WEDNESDAY)
    ).refresh()
    blocked = {e.name: e.blocked for e in snap.overview.environments}
    assert blocked["production"] == ["cannot judge approvals, refusing: forge unreachable"]
    assert blocked["staging"] == blocked["production"]  # staging has pending changes too
    assert blocked["dev"] == []  # nothing pending: nothing to judge


# -- the overview in process -----------------------------------------------------------

DEV_SPEC = "metadata: {name: dev}\nspec:\n"
RECORDED_WINDOW = '  windows: [{deny: "0 9 * * *", duration: 2h, timezone: UTC}]\n'


@pytest.mark.parametrize(
    "head_window",
    ["", '  windows: [{deny: "0 9 * * *", duration: 10m, timezone: UTC}]\n'],
    ids=["removed", "narrowed"],
)
def test_the_window_is_the_policy_of_records_not_the_branch_heads(
    example_repo: Path, head_window: str
) -> None:
    """dev was applied under a deny window of 09:00-11:00 UTC; the branch head removes
    or narrows it. At 09:30 the gate judges by the recorded window: closed. So must the
    overview (and the dashboard's /api/overview, the same document)."""
    envs = example_repo / "manifests/environments.yaml"
    original = envs.read_text()
    assert DEV_SPEC in original
    envs.write_text(original.replace(DEV_SPEC, DEV_SPEC + RECORDED_WINDOW, 1))
    commit_all(example_repo, "dev: no deploys from 09:00 to 11:00 UTC")
    settings = load_settings(example_repo)
    report = run_apply(Session.start(settings), ApplyRequest(environments=["dev"], now=WEDNESDAY))
    assert report.exit_code == 0 and report.results[0].outcome == "applied"

    envs.write_text(original.replace(DEV_SPEC, DEV_SPEC + head_window, 1))
    chat = example_repo / "manifests/deployments/support-chat.yaml"
    chat.write_text(chat.read_text().replace("maxTokens: 400", "maxTokens: 500"))
    commit_all(example_repo, "dev: deploy whenever; longer answers")

    at_0930 = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
    snap = Refresher(
        Session.start(settings), verdicts=lambda p: {}, live=False, clock=Clock(at_0930)
    ).refresh()
    doc = json.loads(overview_view.json(snap.overview))
    dev = next(e for e in doc["environments"] if e["name"] == "dev")
    (run,) = json.loads(run_cli(["--repo", str(example_repo), "history", "--json"]).out)
    window = dev["window"]
    assert window is not None and window["open"] is False
    assert window["policy"] == f"run {run['id']} (commit {run['commit'][:12]})"
    assert window["reason"].startswith("inside deny window `0 9 * * *` for 2h (UTC)")
    assert window["next_open"] == "2026-12-03T11:00:00+00:00"
    assert dev["blocked"] == [
        "outside its deploy window: " + window["reason"] + "; it opens at "
        + window["next_open_local"]
    ]  # fmt: skip
    if head_window:
        assert dev["head_window"]["open"] is True
        assert dev["head_window"]["policy"] == "the deploy branch head"
    else:
        assert dev["head_window"] is None


def test_matrix_highlights_differences_and_counts_degraded(applied_repo: Path) -> None:
    settings = load_settings(applied_repo)
    assert run_cli(["--repo", str(applied_repo), "apply", "--env", "staging"]).code == 0
    store = open_state(settings.state_url, repo_root=applied_repo, env={}, read_only=True)
    try:
        loaded, plan, _ = build_plan(Session.start(settings), store, ref="main")
        chat = InstanceKey("staging", "Deployment", "support-chat")
        live = LiveReport(
            datetime.now(UTC),
            DriftReport({"staging": []}),
            health={chat: HealthStatus("Degraded", "CrashLoopBackOff")},
        )
        report = collect_overview(loaded.desired, plan, store, None, live=live)
    finally:
        store.close()
    staging = next(e for e in report.environments if e.name == "staging")
    assert staging.live is not None and staging.live.degraded == 1
    row = next(r for r in report.rows if r.name == "support-chat")
    dev, stg, prod = (row.cells[e] for e in ("dev", "staging", "production"))
    assert dev is not None and not dev.differs  # the chain starts here
    assert stg is not None and stg.differs and stg.prompt == "support@1.1.0"
    assert stg.health == "Degraded" and stg.health_message == "CrashLoopBackOff"
    assert prod is not None and not prod.deployed and prod.pending == "create"
    assert prod.differs and prod.pending_model == "gpt-4o"
    classifier = next(r for r in report.rows if r.name == "intent-classifier")
    assert classifier.cells["production"] is None  # not declared there: nothing to promote


# -- forge links, CLI ------------------------------------------------------------------


def test_forge_links(tmp_path: Path) -> None:
    def links(env: dict[str, str], source: str = "none", repository: str | None = None) -> Any:
        s = load_settings(tmp_path, env=env)
        approvals = ApprovalsConfig(source=source, repository=repository)  # type: ignore[arg-type]
        return forge_links(type(s)(**{**s.__dict__, "approvals": approvals}))

    gh = links({"GITHUB_REPOSITORY": "acme/m"})
    assert gh.commit("ab12cd3") == "https://github.com/acme/m/commit/ab12cd3"
    assert gh.pull_request(7) == "https://github.com/acme/m/pull/7" and gh.pr_label(7) == "#7"
    ghe = links({"GITHUB_SERVER_URL": "https://ghe.example/"}, "github", "acme/m")
    assert ghe.pull_request(1) == "https://ghe.example/acme/m/pull/1"
    gl = links({"CI_SERVER_URL": "https://gitlab.example", "CI_PROJECT_PATH": "g/sub/p"})
    assert gl.commit("ab12cd3") == "https://gitlab.example/g/sub/p/-/commit/ab12cd3"
    assert gl.pull_request(3) == "https://gitlab.example/g/sub/p/-/merge_requests/3"
    assert gl.pr_label(3) == "!3"
    assert links({}) is None
    assert links({"GITHUB_SERVER_URL": "javascript:alert(1)", "GITHUB_REPOSITORY": "a/b"}) is None
    assert gh.commit("not a sha") is None


def test_serve_refuses_bad_options_in_one_line(example_repo: Path) -> None:
    r = run_cli(["--repo", str(example_repo), "serve", "--refresh", "soon"])
    assert r.code == 1 and r.err.startswith("error: --refresh: ") and "Traceback" not in r.err
    r = run_cli(
        ["--repo", str(example_repo), "serve", "--host", "192.0.2.1", "--port", "1"],
        env={"RECONCILER_DASHBOARD_TOKEN": TOKEN},
    )
    assert r.code == 1 and "cannot listen on 192.0.2.1:1" in r.err and "Traceback" not in r.err


def test_show_schedules_and_overview_commands(applied_repo: Path) -> None:
    def cli(*args: str) -> Any:
        r = run_cli(["--repo", str(applied_repo), *args])
        return r

    missing = cli("show", "nope")
    assert missing.code == 1 and missing.err.startswith("error: no run 'nope' is recorded")
    run_id = json.loads(cli("history", "--json").out)[0]["id"]
    shown = json.loads(cli("show", run_id, "--json").out)
    assert shown["id"] == run_id and len(shown["changes"]) == 6
    assert {c["action"] for c in shown["changes"]} == {"create"}
    assert "deployment.support-chat" in cli("show", run_id).out

    sched = json.loads(cli("schedules", "--json").out)
    assert [(s["environment"], s["name"], s["interval"]) for s in sched] == [
        ("dev", "ticket-digest", "30m")
    ]
    assert len(sched[0]["next_runs"]) == 5 and sched[0]["next_runs"][0]["text"].endswith("UTC")

    doc = json.loads(cli("overview", "--no-live", "--json").out)
    assert doc["live_as_of"] is None and doc["matrix"]["environments"] == [
        "dev",
        "staging",
        "production",
    ]
    text = cli("overview", "--no-live").out
    assert "Promotion matrix" in text and "production (protected)" in text


def test_history_of_a_commit_this_clone_does_not_have(applied_repo: Path) -> None:
    """A run recorded with a commit this clone lacks (here git's null sha, which CI
    systems use for "no commit"): history and the dashboard show it with no subject
    instead of an internal error."""
    settings = load_settings(applied_repo)
    store = open_state(settings.state_url, repo_root=applied_repo, env={})
    try:
        at = datetime.now(UTC)
        store.begin_run(RunRecord("elsewhere", "dev", "0" * 40, "apply", at, None, "running"))
        store.finish_run("elsewhere", "applied")
    finally:
        store.close()
    r = run_cli(["--repo", str(applied_repo), "history", "--env", "dev", "--json"])
    assert r.code == 0, r.err
    assert json.loads(r.out)[0]["subject"] is None
    snap = Refresher(Session.start(settings), verdicts=lambda p: {}, live=False).refresh()
    assert snap.history.rows[0].run.id == "elsewhere"


def test_an_agent_embeds_the_app_and_drives_the_refresher(applied_repo: Path) -> None:
    """make_app + a Refresher the caller drives, served by uvicorn in this process."""
    import threading

    import uvicorn

    from reconciler.dashboard.app import make_app

    settings = load_settings(applied_repo)
    session = Session.start(settings)
    refresher = Refresher(session, verdicts=lambda p: {}, live=False)
    app = make_app(session, refresher=refresher)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            threading.Event().wait(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/healthz").json()["ready"] is False
        waiting = httpx.get(base + "/")
        assert waiting.status_code == 503 and "not ready" in waiting.text
        assert httpx.get(base + "/api/overview").status_code == 503
        refresher.refresh()
        assert httpx.get(base + "/healthz").json()["ready"] is True
        page = httpx.get(base + "/")
        assert page.status_code == 200 and "production" in page.text
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_run_page_shows_recorded_field_diffs_and_masks_secrets(applied_repo: Path) -> None:
    """Field diffs as recorded with the run (written here through the StateStore API, as
    the executor records them); a secret value that reached a record is still masked."""
    from reconciler.state.base import ChangeRecord

    secret = "vendor-key-value-31337"
    settings = load_settings(applied_repo)
    store = open_state(settings.state_url, repo_root=applied_repo, env={})
    diff = [
        {"path": "options.temperature", "before": 0.2, "after": 0.7},
        {"path": "env.VENDOR_KEY", "before": {"secretEnv": "VENDOR_KEY"}, "after": secret},
        {"path": "prompt.template", "before": "line one\nline two", "after": "line one\nline 2"},
    ]
    try:
        at = datetime.now(UTC)
        store.begin_run(RunRecord("with-diffs", "dev", None, "heal", at, None, "running"))
        key = InstanceKey("dev", "Deployment", "support-chat")
        change = ChangeRecord(key, "update", "applied", None, "id-1", "a", "b", at, diff)
        with store.lock("dev", "with-diffs"):
            store.record_change("with-diffs", change, None, None)
        store.finish_run("with-diffs", "applied")
    finally:
        store.close()
    server = start(applied_repo, {"VENDOR_KEY": secret}, "--refresh", "1h")
    try:
        page = server.get("/runs/with-diffs").text
        api = server.get("/api/runs/with-diffs").text
    finally:
        server.stop()
    assert '<td class="mono">options.temperature</td>' in page
    assert '<td class="before mono">0.2</td><td class="after mono">0.7</td>' in page
    assert "+line 2" in page and "-line two" in page  # long text as a unified diff
    assert "{&#34;secretEnv&#34;: &#34;VENDOR_KEY&#34;}" in page
    assert secret not in page and secret not in api
    assert page.count("(sensitive)") >= 1 and "(sensitive)" in api
