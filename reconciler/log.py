"""Logging through structlog: console on a TTY, JSON lines in CI, secrets redacted.

Every log line, whatever its origin, passes the redaction processor: values of
registered secrets (tokens read from the environment, secret env vars) are replaced
by `(sensitive)`, as are values of keys that name credentials.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal

import structlog

REDACTED = "(sensitive)"
_SENSITIVE_KEYS = re.compile(r"(token|password|secret|authorization|api[-_]?key)", re.I)
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Make sure `value` never appears in any log line (or rendered output)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def register_secrets(values: Iterable[str | None]) -> None:
    for v in values:
        register_secret(v)


def redact(text: str) -> str:
    for s in sorted(_secrets, key=len, reverse=True):
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _SENSITIVE_KEYS.search(k) and v else _scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _redact_processor(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for k in list(event):
        v = event[k]
        if isinstance(k, str) and _SENSITIVE_KEYS.search(k) and v and k != "event":
            event[k] = REDACTED
        else:
            event[k] = _scrub(v)
    return event


def configure(
    *, fmt: Literal["console", "json"] | None = None, verbosity: int = 0, in_ci: bool = False
) -> None:
    """Set up structlog once per process; logs go to stderr (stdout is for results)."""
    if fmt is None:
        fmt = "json" if in_ci or not sys.stderr.isatty() else "console"
    level = logging.INFO - 10 * verbosity
    level = max(logging.DEBUG, min(logging.CRITICAL, level))
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "reconciler") -> Any:
    return structlog.get_logger(name)
