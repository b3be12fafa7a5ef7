"""State URLs as they may be shown: a `postgresql://` URL can carry a password, which
must never reach an error, a log line or output."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

MASK = "***"
#: Query parameters of a libpq URL whose values are credentials.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def passwords(url: str) -> list[str]:
    """Every credential in `url`, as written and percent-decoded (for redaction)."""
    parts = urlsplit(url)
    found: list[str] = []
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in _SECRET_PARAMS]
    found += [v for k, v in _raw_query(parts.query) if k in _SECRET_PARAMS]
    return [p for p in dict.fromkeys([*found, *map(unquote, found)]) if p]


def mask_url(url: str) -> str:
    """`url` with its password (userinfo or `password=` parameter) replaced by ***."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{hosts}"
    query = parts.query
    if any(k in _SECRET_PARAMS for k, _ in _raw_query(query)):
        query = "&".join(f"{k}={MASK if k in _SECRET_PARAMS else v}" for k, v in _raw_query(query))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _raw_query(query: str) -> list[tuple[str, str]]:
    return [(k, v) for k, _, v in (p.partition("=") for p in query.split("&") if p)]
