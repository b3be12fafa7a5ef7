"""The dashboard as a person sees it: the real server (`reconciler serve`), the
distribution's Chromium driven headless by Playwright, a repo with real history (three
environments, a rollback, a drifted staging, a blocked production; see
dashboard_fixture.py). Every page is saved as a screenshot for review under
test-output/dashboard/ (or $RECONCILER_TEST_OUTPUT/dashboard/)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from dashboard_fixture import (
    FORGE,
    HAND_EDITED_SECRET,
    REGISTRY_TOKEN,
    SECRET,
    DashboardRepo,
)
from dashboard_server import Server

playwright = pytest.importorskip("playwright.sync_api")
pytest_plugins = ["dashboard_site"]  # the served repo (`site`), shared with test_dashboard

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT = Path(os.environ.get("RECONCILER_TEST_OUTPUT") or ROOT / "test-output") / "dashboard"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("the browser tests need Debian's chromium (.ci/run installs it)")
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh --user-data-dir
    with playwright.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
            color_scheme="light",
        )
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    pg = browser.new_page()  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        pg.close()


def visit(page: object, server: Server, path: str) -> object:
    response = page.goto(server.url + path.lstrip("/"))  # type: ignore[attr-defined]
    assert response.status == 200, path
    html = page.content()  # type: ignore[attr-defined]
    for secret in (SECRET, HAND_EDITED_SECRET, REGISTRY_TOKEN):
        assert secret not in html, f"{path} shows a secret"
    return page


def shoot(page: object, name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    assert path.stat().st_size > 10_000
    return path


def card(page: object, env: str) -> object:
    return page.locator(f"section#env-{env}")  # type: ignore[attr-defined]


def test_environments_page(site: tuple[DashboardRepo, Server], page: object) -> None:
    d, server = site
    visit(page, server, "/")
    cards = page.locator("section.card.env h2")  # type: ignore[attr-defined]
    assert cards.all_inner_texts() == ["dev", "staging", "production"]

    dev = card(page, "dev")
    assert "rollback" in dev.locator(".last-run").inner_text()
    assert "Revert" in dev.locator(".last-run").inner_text()

    staging = card(page, "staging")
    assert staging.locator(".badge", has_text="drifted").count() == 1
    assert "4 in sync · 2 drifted · 0 degraded" in staging.locator(".counts").inner_text()

    prod = card(page, "production")
    assert "blocked" in (prod.get_attribute("class") or "")
    reasons = prod.locator(".blocked-reasons").inner_text()
    assert "needs 2 approvals" in reasons and "a direct push" in reasons
    assert d.commits["C4"][:7] in reasons  # the commit that is not covered
    assert "2 to update" in prod.locator(".pending").inner_text()
    last = prod.locator(".last-run")
    assert "approved by alice, carol" in last.inner_text()
    pr = last.get_by_role("link", name="PR #2")
    assert pr.get_attribute("href") == f"{FORGE}/acme/manifests/pull/2"
    commit = last.locator("a.mono", has_text=d.commits["C2"][:7])
    assert commit.get_attribute("href") == f"{FORGE}/acme/manifests/commit/{d.commits['C2']}"
    assert prod.locator(".badge", has_text="protected").count() == 1
    assert "open" in prod.locator(".window").inner_text()
    shoot(page, "environments")


def test_promotion_matrix_page(site: tuple[DashboardRepo, Server], page: object) -> None:
    _, server = site
    visit(page, server, "/matrix")

    def cell(name: str, env: str) -> object:
        return page.locator(f'td[data-deployment="{name}"][data-env="{env}"]')  # type: ignore[attr-defined]

    prod_chat = cell("support-chat", "production")
    assert "differs" in (prod_chat.get_attribute("class") or "")
    text = prod_chat.inner_text()
    assert "gpt-4o" in text and "support@1.1.0" in text and "≠ staging" in text
    assert "update pending → gpt-4o support@1.2.0" in text
    assert "differs" not in (cell("support-chat", "staging").get_attribute("class") or "")
    assert "drifted" in cell("support-chat", "staging").inner_text()
    summarizer = cell("ticket-summarizer", "production")
    assert "update pending" in summarizer.inner_text()
    assert "differs" not in (summarizer.get_attribute("class") or "")
    assert "Healthy" in cell("docs-embedder", "production").inner_text()
    shoot(page, "matrix")

    page.get_by_label("only differing or pending").check()  # type: ignore[attr-defined]
    page.get_by_role("button", name="Filter").click()  # type: ignore[attr-defined]
    # The click only starts the navigation: wait until the filtered page has loaded.
    page.wait_for_url(re.compile(r"/matrix\?.*only=changed"))  # type: ignore[attr-defined]
    rows = page.locator("table.matrix tbody th[scope=row]").all_inner_texts()  # type: ignore[attr-defined]
    assert rows == ["support-chat", "ticket-summarizer"]


def test_history_page_links_rollbacks(site: tuple[DashboardRepo, Server], page: object) -> None:
    d, server = site
    visit(page, server, "/history")
    runs = page.locator("tr.run")  # type: ignore[attr-defined]
    ids = [runs.nth(i).get_attribute("data-run") for i in range(runs.count())]
    assert ids == [r["id"] for r in d.history()]  # newest first, as `reconciler history`
    assert len(ids) == 9
    rollback = page.locator("tr.run", has=page.locator(".badge", has_text="rollback")).first  # type: ignore[attr-defined]
    assert f"rolls back {d.commits['C2'][:7]}" in rollback.inner_text()
    prod = page.locator("tr.run", has_text="PR #2").first  # type: ignore[attr-defined]
    assert "approved by alice, carol" in prod.inner_text()
    shoot(page, "history")

    reverted = rollback.locator("a", has_text=re.compile(r"^\d{8}T")).last
    reverted_id = reverted.inner_text()
    reverted.click()
    page.wait_for_url(f"**/runs/{reverted_id}")  # type: ignore[attr-defined]
    assert "warmer summaries" in page.locator("main").inner_text()  # type: ignore[attr-defined]
    back = page.locator(".rolled-back-by a")  # type: ignore[attr-defined]
    assert back.count() == 1

    visit(page, server, "/history?env=production")
    assert page.locator("tr.run").count() == 2  # type: ignore[attr-defined]


def test_run_page(site: tuple[DashboardRepo, Server], page: object) -> None:
    d, server = site
    rollback = next(r for r in d.history() if r["trigger"] == "rollback")
    visit(page, server, f"/runs/{rollback['id']}")
    main = page.locator("main")  # type: ignore[attr-defined]
    text = main.inner_text()
    assert "rollback" in text and "applied" in text and 'Revert "ticket-summarizer' in text
    reverts = page.locator(".reverts")  # type: ignore[attr-defined]
    sha = d.commits["C2"]
    assert reverts.locator("a", has_text=sha[:7]).get_attribute("href") == (
        f"{FORGE}/acme/manifests/commit/{sha}"
    )
    assert reverts.locator("a", has_text=rollback["reverted_runs"][0]).count() == 1
    change = page.locator('li.change[data-address="deployment.ticket-summarizer"]')  # type: ignore[attr-defined]
    assert "update" in change.inner_text() and "applied" in change.inner_text()
    recorded = server.get(f"/api/runs/{rollback['id']}").json()["changes"][0]["diff"]
    for d_ in recorded:  # recorded once the executor records field diffs
        row = change.locator("table.diff tr", has_text=d_["path"])
        assert row.count() == 1
    shoot(page, "run")


def test_schedules_page(site: tuple[DashboardRepo, Server], page: object) -> None:
    _, server = site
    visit(page, server, "/schedules")
    digest = page.locator('#schedules-dev tr[data-schedule="ticket-digest"]')  # type: ignore[attr-defined]
    assert "every 30m" in digest.inner_text()
    assert digest.locator("td.utc div").count() == 5
    nightly = page.locator('#schedules-staging tr[data-schedule="nightly-reindex"]')  # type: ignore[attr-defined]
    local = nightly.locator("td.local").inner_text()
    utc = nightly.locator("td.utc").inner_text()
    assert re.search(r"02:00 CES?T", local), local
    assert re.search(r"(01|00):00:00 UTC", utc), utc
    assert page.locator("#schedules-production tr").count() >= 3  # type: ignore[attr-defined]
    shoot(page, "schedules")


def test_drift_page_masks_secrets(site: tuple[DashboardRepo, Server], page: object) -> None:
    _, server = site
    visit(page, server, "/drift")
    staging = page.locator("#drift-staging")  # type: ignore[attr-defined]
    assert "2 drifted" in staging.locator("h2").inner_text()
    chat = staging.locator('[data-address="deployment.support-chat"]')
    row = chat.locator("table.diff tbody tr")
    assert row.locator("td").all_inner_texts() == ["options.temperature", "0.2", "0.9"]
    reranker = staging.locator('[data-address="deployment.reranker"]')
    assert "(sensitive)" in reranker.inner_text()
    assert "in sync" in page.locator("#drift-production h2").inner_text()  # type: ignore[attr-defined]
    shoot(page, "drift")


def test_phone_and_dark(site: tuple[DashboardRepo, Server], browser: object) -> None:
    """Readable on a phone in dark mode: nothing but the tables scrolls sideways."""
    _, server = site
    pg = browser.new_page()  # type: ignore[attr-defined]
    try:
        pg.set_viewport_size({"width": 390, "height": 844})
        pg.emulate_media(color_scheme="dark")
        for path, name in (("/", "environments"), ("/matrix", "matrix"), ("/history", "history")):
            visit(pg, server, path)
            wide = pg.evaluate("document.scrollingElement.scrollWidth")
            assert wide <= 390, f"{path} is {wide}px wide on a 390px phone"
            bg = pg.evaluate("getComputedStyle(document.body).backgroundColor")
            assert bg == "rgb(13, 17, 23)", bg
            shoot(pg, f"{name}-dark-phone")
    finally:
        pg.close()


def test_each_environment_says_where_it_stands_and_what_to_do(
    site: tuple[DashboardRepo, Server], page: object
) -> None:
    """One line per environment (sync · health — next step), fix hints where something
    is wrong, a skip link as the first stop of the keyboard, and no failed request."""
    _, server = site
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)  # type: ignore[attr-defined]
    page.on("console", lambda m: failed.append(m.text) if m.type == "error" else None)  # type: ignore[attr-defined]
    visit(page, server, "/")

    def status(env: str) -> str:
        return str(card(page, env).locator(".status-line").inner_text())  # type: ignore[attr-defined]

    assert status("dev").startswith("Synced · Healthy") and "nothing to do" in status("dev")
    assert status("staging").startswith("Drifted")
    assert "reconciler apply --heal --env staging" in status("staging")
    prod = card(page, "production").locator(".status-line")  # type: ignore[attr-defined]
    assert (
        "blocked" in prod.inner_text()
        and "reconciler approvals --env production" in prod.inner_text()
    )
    assert "bad" in (prod.get_attribute("class") or "")

    page.keyboard.press("Tab")  # type: ignore[attr-defined]
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    assert page.evaluate("document.activeElement.id") == "main"  # type: ignore[attr-defined]
    shoot(page, "environments-status")

    visit(page, server, "/drift")
    fix = page.locator("#drift-staging .fix").inner_text()  # type: ignore[attr-defined]
    assert "reconciler apply --heal --env staging" in fix
    assert failed == []
