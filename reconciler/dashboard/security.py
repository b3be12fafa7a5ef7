"""What guards every response: the Host check (against DNS rebinding while bound to
loopback), the bearer token (everything but /healthz), security headers; and what may
listen where: beyond loopback only with a token (`check_listening`).

A browser cannot send an Authorization header by itself, so /login trades the token
for a cookie holding an HMAC of it (never the token), HttpOnly and SameSite=Strict.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
from collections.abc import Collection, Sequence
from http.cookies import SimpleCookie

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reconciler.errors import ConfigError

#: The bearer token of `serve` and `agent`, read from the environment (never a flag:
#: ps shows flags).
TOKEN_VAR = "RECONCILER_DASHBOARD_TOKEN"
#: Listening beyond loopback without the token: only when asked for by this name.
INSECURE_FLAG = "--insecure-no-token"
COOKIE = "reconciler_session"
OPEN_PATHS = frozenset({"/healthz", "/login"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

LOGIN_CSS = (
    "body{font:16px system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem}"
    "input,button{font:inherit;padding:.4rem;width:100%;box-sizing:border-box;margin:.3rem 0}"
    "@media (prefers-color-scheme:dark){body{background:#111;color:#ddd}}"
)
_LOGIN_CSS_HASH = base64.b64encode(hashlib.sha256(LOGIN_CSS.encode()).digest()).decode()
CSP = (
    "default-src 'none'; style-src 'self' 'sha256-{hash}'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
).replace("{hash}", _LOGIN_CSS_HASH)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    "Cache-Control": "no-store",
}


def session_value(token: str) -> str:
    """What the login cookie holds: proves the token was given, cannot be turned back."""
    return hmac.new(token.encode(), b"reconciler-dashboard-session", hashlib.sha256).hexdigest()


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost`; any other name, 0.0.0.0, :: or "" is not (a
    name may resolve anywhere, and the empty host is every interface)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_hosts(host: str, port: int) -> Sequence[str] | None:
    """Host names a browser may use for a server bound to loopback (None: any)."""
    if not is_loopback(host):
        return None
    return ["localhost", "127.0.0.1", "[::1]", host]


def check_listening(
    host: str, token: str | None, *, insecure_no_token: bool, what: str
) -> str | None:
    """Before anything listens: beyond loopback, `what` (the pages, API and metrics) is
    served only behind the token, unless the operator named the risk with INSECURE_FLAG.
    Raises ConfigError (exit 1) for a refusal; returns the warning to log, if any."""
    if token or is_loopback(host):
        return None
    shown = host or "every interface"
    if not insecure_no_token:
        raise ConfigError(
            f"refusing to listen on {shown} without a token: set {TOKEN_VAR}, listen on "
            f"127.0.0.1, or pass {INSECURE_FLAG}",
            details=f"on {shown}, anyone who can reach the port would read {what}",
        )
    return (
        f"listening on {shown} without a token ({INSECURE_FLAG}): anyone who can reach the "
        f"port reads {what}"
    )


def login_page(message: str = "", *, next_path: str = "/") -> str:
    note = f"<p role='alert'>{html.escape(message)}</p>" if message else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>Sign in · reconciler</title><style>{LOGIN_CSS}</style></head><body>"
        f"<h1>reconciler</h1><p>This dashboard needs its access token.</p>{note}"
        "<form method='post' action='/login'>"
        f"<input type='hidden' name='next' value='{html.escape(next_path, quote=True)}'>"
        "<label for='token'>Token</label>"
        "<input id='token' name='token' type='password' autocomplete='current-password' required>"
        "<button type='submit'>Sign in</button></form></body></html>"
    )


class Guard:
    """ASGI middleware in front of the whole app."""

    def __init__(
        self, app: ASGIApp, *, token: str | None, allowed_hosts: Collection[str] | None
    ) -> None:
        self.app = app
        self.token = token
        self.session = session_value(token) if token else None
        self.allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    if name not in out:
                        out[name] = value
            await send(message)

        if not self._host_allowed(headers.get("host", "")):
            await _plain(send_secured, 400, "text/plain", "invalid Host header\n")
            return
        if self.token and scope["path"] not in OPEN_PATHS and not self.authorized(headers):
            await self._refuse(scope, send_secured)
            return
        await self.app(scope, receive, send_secured)

    def _host_allowed(self, host: str) -> bool:
        if self.allowed_hosts is None:
            return True
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.lower() in self.allowed_hosts

    def authorized(self, headers: Headers) -> bool:
        assert self.token is not None and self.session is not None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), self.token):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is no session
            return False
        morsel = cookie.get(COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value, self.session)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        extra = [(b"www-authenticate", b'Bearer realm="reconciler"')]
        if str(scope["path"]).startswith("/api/"):
            body = '{"error": "unauthorized: send Authorization: Bearer <token>"}\n'
            await _plain(send, 401, "application/json", body, extra)
        else:
            nxt = str(scope["path"]) if str(scope["path"]).startswith("/") else "/"
            await _plain(send, 401, "text/html; charset=utf-8", login_page(next_path=nxt), extra)


async def _plain(
    send: Send,
    status: int,
    media_type: str,
    body: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    data = body.encode()
    headers = [
        (b"content-type", media_type.encode()),
        (b"content-length", str(len(data)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
