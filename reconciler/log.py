"""Logging through structlog: human lines unless CI is set (or --log-format json),
JSON lines in CI, secrets redacted.

The masking lives here (`SecretValues`: a value in any of its forms, whatever surrounds
it). A session's outputs (stdout, plan files, PR comments, commit statuses, job
summaries, notices, the dashboard) go through its own `reconciler.redaction.Redactor`;
the process-wide set here (`register_secret`, `redact`, `redact_data`), fed by every
redactor, is the backstop of log lines and of text built where no session is at hand.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal
from urllib.parse import quote

REDACTED = "(sensitive)"
#: Shorter values are not searched for in text: masking "abc" everywhere would mangle
#: unrelated output and, by what it leaves around it, reveal the value anyway. Where a
#: value is known to sit (a secret env var read back from a provider), drift masks it
#: whatever its length.
MIN_SECRET_LENGTH = 4
_SENSITIVE_KEYS = re.compile(r"(token|password|secret|authorization|api[-_]?key)", re.I)


def _forms(value: str) -> set[str]:
    """The value as it may appear in output: raw, JSON-escaped (both ways), URL-quoted."""
    forms = {value, value.strip()}
    forms.add(json.dumps(value)[1:-1])
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    forms.add(quote(value, safe=""))
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


class SecretValues:
    """A set of secret values and the masking of text by it. Thread-safe: additions
    take a lock, masking reads one consistent snapshot of the forms and their pattern.

    Each session's `Redactor` keeps one; the process keeps one more (`register_secret`,
    `redact`) as the backstop of log lines, which no session renders."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        #: Every form, longest first (the alternation prefers the longest match), and
        #: its pattern; replaced together, never changed in place.
        self._snapshot: tuple[tuple[str, ...], re.Pattern[str] | None] = ((), None)
        self._lock = threading.Lock()

    def add(self, value: str | None) -> None:
        if not value or len(value.strip()) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            if value in self._values:
                return
            self._values.add(value)
            ordered = self._snapshot[0]
            new = _forms(value) - set(ordered)
            if new:
                forms = tuple(sorted({*ordered, *new}, key=len, reverse=True))
                self._snapshot = (forms, re.compile("|".join(map(re.escape, forms))))

    def add_all(self, values: Iterable[str | None]) -> None:
        for v in values:
            self.add(v)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._snapshot = ((), None)

    def is_secret(self, text: str) -> bool:
        """True when `text` holds one of the values (or an encoded form of one)."""
        return any(s in text for s in self._snapshot[0])

    def redact(self, text: str) -> str:
        """`text` with every value replaced by REDACTED (`_mask`)."""
        forms, pattern = self._snapshot
        if pattern is None or not any(s in text for s in forms):
            return text
        return _mask(text, pattern)

    def redact_data(self, value: Any) -> Any:
        """A copy of JSON-like data with the values masked in every string, key included."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {
                (self.redact(k) if isinstance(k, str) else k): self.redact_data(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.redact_data(v) for v in value]
        return value


#: The process-wide values: the backstop of log lines, fed by every session's redactor.
_backstop = SecretValues()


def register_secret(value: str | None) -> None:
    """Make sure `value` never appears in any log line (the process-wide backstop)."""
    _backstop.add(value)


def register_secrets(values: Iterable[str | None]) -> None:
    _backstop.add_all(values)


def forget_secrets() -> None:
    """Forget every registered value: for a process that runs many commands in turn
    (tests), so each must register its own before rendering."""
    _backstop.clear()


def is_secret(text: str) -> bool:
    """True when `text` holds a registered secret value (or an encoded form of one)."""
    return _backstop.is_secret(text)


def redact(text: str) -> str:
    """`text` with every registered secret value replaced by REDACTED."""
    return _backstop.redact(text)


def redact_data(value: Any) -> Any:
    """A copy of JSON-like data with secrets masked in every string, key included."""
    return _backstop.redact_data(value)


def _mask(text: str, pattern: re.Pattern[str]) -> str:
    """`text` with every match of `pattern` replaced by REDACTED. A match that starts or
    ends inside a backslash escape (JSON's `\\u00e9`, `\\"`) takes the whole escape with
    it, so masking never breaks the JSON around it."""
    out: list[str] = []
    done = 0
    found = pattern.search(text)
    while found is not None:
        start, end = found.span()
        inside = _escape_around(text, start)
        if inside is not None:
            start = max(inside[0], done)
            # The match began among the escape's own characters; the value itself
            # may begin right after the escape.
            after = pattern.match(text, inside[1])
            end = max(end, after.end()) if after is not None else end
        end = _escape_end(text, end)
        out.append(text[done:start])
        out.append(REDACTED)
        done = end
        found = pattern.search(text, done)
    out.append(text[done:])
    return "".join(out)


_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|.)", re.S)


def _escape_around(text: str, i: int) -> tuple[int, int] | None:
    """The span of the backslash escape that `i` falls strictly inside, if any."""
    for b in range(i - 1, max(-1, i - 6), -1):
        if text[b] != "\\":
            continue
        run = b
        while run > 0 and text[run - 1] == "\\":
            run -= 1
        if (b - run) % 2:  # this backslash is itself escaped
            continue
        esc = _ESCAPE.match(text, b)
        if esc is not None and esc.start() < i < esc.end():
            return esc.span()
    return None


def _escape_end(text: str, i: int) -> int:
    span = _escape_around(text, i)
    return span[1] if span else i


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            (redact(k) if isinstance(k, str) else k): (
                REDACTED if isinstance(k, str) and _SENSITIVE_KEYS.search(k) and v else _scrub(v)
            )
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


def _drop_none(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A field with no value says nothing (`error=None` on every applied change)."""
    for k in [k for k, v in event.items() if v is None]:
        del event[k]
    return event


def _redact_rendered(_logger: Any, _name: str, line: Any) -> Any:
    """Last pass over the rendered line: catches what a renderer added (a traceback)."""
    return redact(line) if isinstance(line, str) else line


_Format = Literal["console", "json"]
#: What `configure` chose, applied to structlog when the first line is written.
_setting: tuple[_Format, int] | None = None
#: Lines below this level are dropped before structlog is even loaded.
_level = logging.NOTSET
#: Bumped by every `configure`, so loggers resolved before it resolve again.
_generation = 0
_applied = -1
_applying = threading.Lock()


def configure(*, fmt: _Format | None = None, verbosity: int = 0, in_ci: bool = False) -> None:
    """Set up logging once per process; logs go to stderr (stdout is for results).

    structlog itself is loaded with the first line written at an enabled level: its
    import (which loads rich's traceback and pretty printers) costs about 50 ms, which a
    quiet command would otherwise pay at every start."""
    global _setting, _level, _generation
    if fmt is None:  # a pipe is still read by a person (`| tee`, `| less`): only CI wants JSON
        fmt = "json" if in_ci else "console"
    level = logging.INFO - 10 * verbosity
    _level = max(logging.DEBUG, min(logging.CRITICAL, level))
    _setting = (fmt, _level)
    _generation += 1
    _route_foreign(logging.WARNING if verbosity < 2 else _level)


def json_lines() -> bool:
    """True when every line on stderr must be a JSON object (`--log-format json`)."""
    return _setting is not None and _setting[0] == "json"


class _Foreign(logging.Handler):
    """Lines of other libraries' loggers (the database driver's, the HTTP server's,
    warnings, a thread's uncaught exception): written as ours, in the same format and
    through the same redaction, never as loose text on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in a library's log call
            message = str(record.msg)
        kw: dict[str, Any] = {"logger": record.name}
        if record.exc_info and record.exc_info[0] is not None:
            kw["exc_info"] = record.exc_info
        method = {
            logging.DEBUG: "debug",
            logging.INFO: "info",
            logging.WARNING: "warning",
        }.get(record.levelno, "error")
        try:
            Logger(record.name)._write(method, record.levelno, message, kw)
        except Exception:  # a log line must never break the library that wrote it
            self.handleError(record)


def _route_foreign(level: int) -> None:
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _Foreign)), None)
    if handler is None:
        handler = _Foreign()
        root.addHandler(handler)
    handler.setLevel(level)
    root.setLevel(min(root.level or logging.WARNING, level))
    logging.captureWarnings(True)
    threading.excepthook = _thread_died


def _thread_died(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    Logger("reconciler").exception("a thread ended with an error", thread=name, exc_info=exc)


def _structlog() -> Any:
    """structlog, configured as `configure` last asked."""
    global _applied
    import structlog

    with _applying:
        if _applied != _generation and _setting is not None:
            _apply(structlog, *_setting)
        _applied = _generation
    return structlog


def _apply(structlog: Any, fmt: _Format, level: int) -> None:
    renderer: Any
    # JSON: the traceback becomes a field (one line, redacted); the console shows it.
    tracebacks: list[Any] = []
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        tracebacks = [structlog.processors.format_exc_info]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *tracebacks,
            _drop_none,
            _redact_processor,
            renderer,
            _redact_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class Logger:
    """A named logger that drops lines below the configured level without loading
    structlog, and otherwise writes through the structlog logger it resolved (once per
    `configure`: structlog's own lazy proxy would rebuild it on every line)."""

    __slots__ = ("_bound", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: tuple[int, Any] | None = None

    def _write(self, method: str, level: int, event: str, kw: dict[str, Any]) -> None:
        if level < _level:
            return
        bound = self._bound
        if bound is None or bound[0] != _generation:
            structlog = _structlog()
            bound = self._bound = (_generation, structlog.get_logger(self._name).bind())
        getattr(bound[1], method)(event, **kw)

    def debug(self, event: str, **kw: Any) -> None:
        self._write("debug", logging.DEBUG, event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._write("info", logging.INFO, event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._write("warning", logging.WARNING, event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._write("error", logging.ERROR, event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        """An error line with the exception being handled."""
        kw.setdefault("exc_info", True)
        self._write("error", logging.ERROR, event, kw)


def get_logger(name: str = "reconciler") -> Logger:
    return Logger(name)
