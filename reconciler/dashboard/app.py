"""The Starlette app: HTML pages and the JSON API over the refresher's last snapshot.

Read-only: every route answers GET (and HEAD); the one POST is /login, which only sets
a cookie. Everything rendered, HTML and JSON, passes the session's redactor.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from reconciler.dashboard.links import ForgeLinks, forge_links
from reconciler.dashboard.refresh import HISTORY_DEFAULT, Refresher, Snapshot
from reconciler.dashboard.security import COOKIE, Guard, login_page, session_value
from reconciler.engine import history as history_command
from reconciler.engine import show as show_command
from reconciler.engine.history import HistoryReport, HistoryRow
from reconciler.engine.overview import EnvironmentOverview
from reconciler.engine.show import RunReport
from reconciler.errors import ReconcilerError
from reconciler.redaction import Redactor
from reconciler.runs.model import STATUSES
from reconciler.session import Session
from reconciler.views import history as history_view
from reconciler.views import show as show_view
from reconciler.views.text import SYMBOLS, fmt, is_long, short, text_diff

HERE = Path(__file__).parent
#: How long a sign-in lasts (the cookie's Max-Age), in seconds.
SESSION_SECONDS = 12 * 3600
#: Wrong tokens one client may send per window before /login answers 429.
LOGIN_ATTEMPTS = 5
LOGIN_WINDOW = 60.0
MATRIX_PAGE = 100
HISTORY_PAGE = 50
CHANGES_PAGE = 200
SCHEDULES_PAGE = 200
NAV = (
    ("/", "Environments"),
    ("/matrix", "Promotion"),
    ("/history", "History"),
    ("/schedules", "Schedules"),
    ("/executions", "Executions"),
    ("/metrics", "Usage"),
    ("/drift", "Drift"),
)


def latency_chart(snap: Snapshot) -> list[dict[str, Any]]:
    """Per usage row, its p50/p95/p99 as bar widths (0-100, against the slowest p99)."""
    rows = snap.usage
    top = max((r.latency(99) or 0.0 for r in rows), default=0.0) or 1.0
    out = []
    for r in rows:
        bars = []
        for p in (50, 95, 99):
            value = r.latency(p)
            bars.append({"p": p, "ms": value, "width": 0 if value is None else 100 * value / top})
        out.append({"row": r, "bars": bars})
    return out


def templates(redactor: Redactor) -> jinja2.Environment:
    """The pages' templates; every `{{ }}` passes `redactor` before it is escaped."""

    def finalize(value: Any) -> Any:
        return redactor.redact(value) if isinstance(value, str) else value

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        finalize=finalize,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, short=short, fmt=fmt, is_long=is_long, text_diff=text_diff)
    env.globals.update(symbols=SYMBOLS, nav=NAV, env_status=env_status)
    return env


@dataclass(frozen=True)
class EnvStatus:
    """An environment in one line, as Argo CD says Synced/Healthy: where it stands, how
    its instances are, and the one thing to do next."""

    sync: str
    health: str
    tone: str
    next_step: str
    #: The command that takes the next step, if one does.
    command: str | None = None


def env_status(e: EnvironmentOverview) -> EnvStatus:
    """The verdict reads the same facts the card shows; the first problem wins the
    next step (a failed run before a block, a block before pending changes)."""
    run = e.last_run.run if e.last_run else None
    pending = any(e.pending.values())
    drifted = e.live is not None and e.live.drifted + e.live.missing > 0
    degraded = e.live is not None and e.live.degraded > 0
    sync = "Drifted" if drifted else "OutOfSync" if pending else "Synced"
    health = "Degraded" if degraded else "Healthy" if e.live and e.instances else "Unknown"
    env = f"--env {e.name}"
    command: str | None = None
    if run is not None and run.outcome in ("failed", "interrupted"):
        step = f"the last run {run.outcome}: read its errors, fix the cause, then"
        command = f"reconciler apply {env}"
    elif e.blocked and e.window is not None and not e.window.open:
        opens = e.window.document().get("next_open_local")
        step = "blocked: wait for the deploy window" + (f" (opens {opens})" if opens else "")
    elif e.blocked:
        step = "blocked (see why below); who approved and who is missing:"
        command = f"reconciler approvals {env}"
    elif pending:
        step, command = "apply the pending changes:", f"reconciler apply {env}"
    elif drifted:
        step, command = "put the recorded spec back:", f"reconciler apply --heal {env}"
    elif degraded:
        step, command = "see which instances and why:", f"reconciler status {env}"
    else:
        step = "nothing to do"
    bad = degraded or e.blocked or (run is not None and run.outcome in ("failed", "interrupted"))
    tone = "bad" if bad else "warn" if drifted or pending else "ok"
    return EnvStatus(sync, health, tone, step, command)


def when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%d %H:%M:%S UTC")


class Dashboard:
    """The routes, bound to one refresher."""

    def __init__(
        self,
        session: Session,
        refresher: Refresher,
        links: ForgeLinks | None,
        token: str | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.refresher = refresher
        self.links = links
        self.token = token
        self.jinja = templates(session.redactor)
        self.clock = clock
        #: Per client address, when its recent wrong tokens were sent.
        self._failures: dict[str, deque[float]] = {}

    # -- plumbing --------------------------------------------------------------------

    def _json(self, text: str, snap: Snapshot) -> Response:
        masked = self.session.redactor.redact(text)
        return Response(masked, media_type="application/json", headers=_as_of(snap))

    def render(
        self, request: Request, name: str, snap: Snapshot, *, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        page = self.jinja.get_template(name).render(
            snap=snap,
            path=request.url.path,
            links=self.links,
            error=self.refresher.error,
            error_at=self.refresher.error_at,
            signed_in=bool(self.token),
            **ctx,
        )
        return HTMLResponse(self.session.redactor.redact(page), status, headers=_as_of(snap))

    def snapshot(self, request: Request) -> Snapshot | Response:
        snap = self.refresher.snapshot
        if snap is not None:
            return snap
        why = self.refresher.error or "the first refresh has not finished yet"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": f"not ready: {why}"}, 503, {"Retry-After": "2"})
        page = self.jinja.get_template("loading.html").render(error=why)
        return HTMLResponse(self.session.redactor.redact(page), 503, {"Retry-After": "2"})

    # -- pages -----------------------------------------------------------------------

    def environments(self, request: Request) -> Response:
        snap = self.snapshot(request)
        if not isinstance(snap, Snapshot):
            return snap
        return self.render(request, "environments.html", snap, title="Environments")

    def matrix(self, request: Request) -> Response:
        snap = self.snapshot(request)
        if not isinstance(snap, Snapshot):
            return snap
        q = request.query_params.get("q", "").strip()
        only = request.query_params.get("only") == "changed"
        rows = [
            r
            for r in snap.overview.rows
            if (not q or q.lower() in r.name.lower()) and (not only or r.differs)
        ]
        pager = Pager(request, len(rows), MATRIX_PAGE)
        return self.render(
            request,
            "matrix.html",
            snap,
            title="Promotion matrix",
            rows=rows[pager.start : pager.end],
            total=len(rows),
            q=q,
            only=only,
            pager=pager,
        )

    def history(self, request: Request) -> Response:
        snap = self.snapshot(request)
        if not isinstance(snap, Snapshot):
            return snap
        env = request.query_params.get("env") or None
        rows = [r for r in snap.history.rows if env is None or r.run.environment == env]
        pager = Pager(request, len(rows), HISTORY_PAGE)
        return self.render(
            request,
            "history.html",
            snap,
            title="History",
            rows=rows[pager.start : pager.end],
            env=env,
            environments=snap.overview.chain,
            pager=pager,
        )

    def run(self, request: Request) -> Response:
        snap = self.snapshot(request)
        if not isinstance(snap, Snapshot):
            return snap
        report = self.run_report(snap, request.path_params["run_id"])
        if report is None:
            return self.render(request, "missing.html", snap, title="No such run", status=404)
        pager = Pager(request, len(report.run.changes), CHANGES_PAGE)
        return self.render(
            request,
            "run.html",
            snap,
            title=f"Run {report.run.id}",
            report=report,
            changes=report.run.changes[pager.start : pager.end],
            pager=pager,
            rolled_back_by=snap.rolled_back_by(report.run.id),
        )

    def schedules(self, request: Request) -> Response:
        snap = self.snapshot(request)
        if not isinstance(snap, Snapshot):
            return snap
        env = request.query_params.get("env") or None
        rows = [r for r in snap.schedules.rows if env is None or r.record.environment == env]
        pager = Pager(request, len(rows), SCHEDULES_PAGE)
        return self.render(
            request,
            "schedules.html",
            snap,
            title="Schedules",
            rows=rows[pager.start : pager.end],
            env=env,
            environments=sorted({r.record.environment for r in snap.schedules.rows}),
            pager=pager,
        )

    def executions(self, request: Request) -> Response:
        """The newest executions, filtered like a log viewer (environment, deployment,
        status), from the snapshot."""
        snap = self.snapshot(request)
        if not isinstance(snap, Snapshot):
            return snap
        q = request.query_params
        env, dep, status = q.get("env") or None, q.get("deployment") or None, q.get("status")
        rows = [
            e
            for e in snap.executions
            if (env is None or e.environment == env)
            and (dep is None or e.deployment == dep)
            and (not status or e.status == status)
        ]
        pager = Pager(request, len(rows), HISTORY_PAGE)
        return self.render(
            request,
            "executions.html",
            snap,
            title="Executions",
            rows=rows[pager.start : pager.end],
            env=env,
            deployment=dep,
            wanted=status,
            environments=sorted({e.environment for e in snap.executions}),
            statuses=STATUSES,
            pager=pager,
        )

    def usage(self, request: Request) -> Response:
        """Usage per deployment and environment over the last day, with each one's
        latency percentiles drawn as bars (SVG rendered here: no JavaScript)."""
        snap = self.snapshot(request)
        if not isinstance(snap, Snapshot):
            return snap
        return self.render(
            request, "metrics.html", snap, title="Usage (last 24 hours)", chart=latency_chart(snap)
        )

    def drift(self, request: Request) -> Response:
        snap = self.snapshot(request)
        if not isinstance(snap, Snapshot):
            return snap
        return self.render(request, "drift.html", snap, title="Drift")

    # -- API -------------------------------------------------------------------------

    def document(self, request: Request) -> Response:
        """A whole CLI document, rendered when the snapshot was built."""
        snap = self.snapshot(request)
        if not isinstance(snap, Snapshot):
            return snap
        name = request.url.path.removeprefix("/api/")
        text = snap.documents.get(name)
        if text is None:
            why = "live state has not been read yet" if name == "drift" else "unknown document"
            return JSONResponse({"error": why}, 503 if name == "drift" else 404)
        return Response(text, media_type="application/json", headers=_as_of(snap))

    def api_history(self, request: Request) -> Response:
        """`reconciler history [--env E]… [--limit N] --json`."""
        snap = self.snapshot(request)
        if not isinstance(snap, Snapshot):
            return snap
        envs = request.query_params.getlist("env")
        try:
            limit = int(request.query_params.get("limit", HISTORY_DEFAULT))
        except ValueError:
            return JSONResponse({"error": "limit must be a whole number"}, 400)
        if limit < 1:
            return JSONResponse({"error": "limit must be 1 or more"}, 400)
        if not envs and limit == HISTORY_DEFAULT:
            return self.document(request)
        rows = [r for r in snap.history.rows if not envs or r.run.environment in envs]
        if len(rows) < limit and snap.history_truncated:  # older runs: ask the state
            report = history_command.history(self.session, envs, limit=limit)
        else:
            report = HistoryReport(rows[:limit])
        return self._json(history_view.json(report), snap)

    def api_run(self, request: Request) -> Response:
        """`reconciler show RUN --json`."""
        snap = self.snapshot(request)
        if not isinstance(snap, Snapshot):
            return snap
        report = self.run_report(snap, request.path_params["run_id"])
        if report is None:
            return JSONResponse({"error": "no such run"}, 404)
        return self._json(show_view.json(report), snap)

    def run_report(self, snap: Snapshot, run_id: str) -> RunReport | None:
        found = next((r for r in snap.history.rows if r.run.id == run_id), None)
        if found is not None:
            return RunReport(HistoryRow(found.run, found.subject))
        if not snap.history_truncated:
            return None
        try:  # older than the snapshot holds: ask the state
            return show_command.show(self.session, run_id)
        except ReconcilerError:
            return None

    def healthz(self, request: Request) -> Response:
        snap = self.refresher.snapshot
        return JSONResponse(
            {
                "status": "ok",
                "ready": snap is not None,
                "built_at": snap.built_at.isoformat() if snap else None,
            }
        )

    def favicon(self, request: Request) -> Response:
        return FileResponse(HERE / "static" / "favicon.svg", media_type="image/svg+xml")

    async def login(self, request: Request) -> Response:
        if request.method == "GET" or not self.token:
            return HTMLResponse(login_page() if self.token else "no token is needed\n")
        client = request.client.host if request.client else "?"
        wait = self._login_wait(client)
        if wait > 0:  # guessing the token is slowed to LOGIN_ATTEMPTS a window
            return HTMLResponse(
                login_page(f"Too many wrong tokens: try again in {math.ceil(wait)} s."),
                429,
                {"Retry-After": str(math.ceil(wait))},
            )
        form = parse_qs((await request.body()).decode(errors="replace"))
        given = (form.get("token") or [""])[0]
        nxt = (form.get("next") or ["/"])[0]
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        if not hmac.compare_digest(given, self.token):
            self._failures.setdefault(client, deque()).append(self.clock())
            return HTMLResponse(login_page("That token is not right.", next_path=nxt), 401)
        self._failures.pop(client, None)
        response = RedirectResponse(nxt, 303)
        response.set_cookie(
            COOKIE,
            session_value(self.token),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def _login_wait(self, client: str) -> float:
        """Seconds until `client` may try a token again (0: now)."""
        failures = self._failures.get(client)
        if not failures:
            return 0.0
        now = self.clock()
        while failures and now - failures[0] >= LOGIN_WINDOW:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0.0
        return LOGIN_WINDOW - (now - failures[0]) if len(failures) >= LOGIN_ATTEMPTS else 0.0


class Pager:
    """Which slice of a long list a page shows, and links to its neighbours."""

    def __init__(self, request: Request, total: int, size: int) -> None:
        try:
            page = int(request.query_params.get("page", "1"))
        except ValueError:
            page = 1
        self.pages = max(1, math.ceil(total / size))
        self.page = min(max(page, 1), self.pages)
        self.start = (self.page - 1) * size
        self.end = self.start + size
        self.total = total
        self._params = {k: v for k, v in request.query_params.items() if k != "page"}
        self._path = request.url.path

    def link(self, page: int) -> str:
        return f"{self._path}?{urlencode({**self._params, 'page': page})}"


def _as_of(snap: Snapshot) -> dict[str, str]:
    return {"X-Reconciler-As-Of": snap.built_at.isoformat()}


def make_app(
    session: Session,
    *,
    refresher: Refresher | None = None,
    token: str | None = None,
    allowed_hosts: Collection[str] | None = None,
    links: ForgeLinks | None = None,
) -> Starlette:
    """The dashboard as an ASGI app. Without a `refresher` it makes one and runs it in a
    thread while the app runs; with one, the caller drives it (an agent calls
    `refresher.refresh()` in its own loop, or `start()`)."""
    own = refresher is None
    r = refresher or Refresher(session)
    if token:
        session.redactor.add([token])
    d = Dashboard(session, r, links or forge_links(session.settings), token)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if own:
            r.start()
        try:
            yield
        finally:
            if own:
                r.stop()

    api = ("overview", "schedules", "status", "plan", "drift", "executions", "metrics")
    routes = [
        Route("/", d.environments),
        Route("/matrix", d.matrix),
        Route("/history", d.history),
        Route("/runs/{run_id}", d.run),
        Route("/schedules", d.schedules),
        Route("/drift", d.drift),
        Route("/executions", d.executions),
        Route("/metrics", d.usage),
        Route("/healthz", d.healthz),
        Route("/favicon.ico", d.favicon),
        Route("/login", d.login, methods=["GET", "POST"]),
        *(Route(f"/api/{name}", d.document) for name in api),
        Route("/api/history", d.api_history),
        Route("/api/runs/{run_id}", d.api_run),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts)
    return app
