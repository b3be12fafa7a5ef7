"""State URLs as they may be shown: a `postgresql://` URL can carry a password, which
must never reach an error, a log line or output."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

MASK = "***"
#: Query parameters of a libpq URL whose values are credentials.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def passwords(url: str) -> list[str]:
    """Every credential in `url`, as written and percent-decoded (for redaction)."""
    found: list[str] = []
    split = _userinfo(url)
    if split is not None and ":" in split[1]:
        found.append(split[1].split(":", 1)[1])
    query = urlsplit(_without_userinfo(url)).query
    found += [v for k, v in parse_qsl(query, keep_blank_values=True) if k in _SECRET_PARAMS]
    found += [v for k, v in _raw_query(query) if k in _SECRET_PARAMS]
    return [p for p in dict.fromkeys([*found, *map(unquote, found)]) if p]


def mask_url(url: str) -> str:
    """`url` with its password (userinfo or `password=` parameter) replaced by ***."""
    split = _userinfo(url)
    if split is not None and ":" in split[1]:
        head, userinfo, rest = split
        url = f"{head}{userinfo.split(':', 1)[0]}:{MASK}{rest}"
    parts = urlsplit(url)
    query = parts.query
    if not any(k in _SECRET_PARAMS for k, _ in _raw_query(query)):
        return url
    query = "&".join(f"{k}={MASK if k in _SECRET_PARAMS else v}" for k, v in _raw_query(query))
    return urlunsplit(parts._replace(query=query))


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """(`scheme://`, the userinfo, the rest from its `@`), read as libpq reads it: up to
    the first `@` before any `/`, so a password may hold `#` or `?` (which a generic URL
    parser takes for a fragment or a query, leaving the password in what it shows)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    for i, ch in enumerate(rest):
        if ch == "/":
            return None
        if ch == "@":
            return scheme + sep, rest[:i], rest[i:]
    return None


def _without_userinfo(url: str) -> str:
    split = _userinfo(url)
    return url if split is None else split[0] + split[2][1:]


def _raw_query(query: str) -> list[tuple[str, str]]:
    return [(k, v) for k, _, v in (p.partition("=") for p in query.split("&") if p)]
