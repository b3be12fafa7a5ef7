"""The CLI run in the test's own process, as a child process would see it.

A process starts with its own environment, working directory, standard streams, an
empty secret registry, unconfigured logging and no threads; it leaves nothing behind.
`run_in_process` gives `reconciler.cli.main` the same: it swaps all of these in for
the call and puts the test's back afterwards, and it fails the test when the command
leaves a thread running (a process would have ended it; here it would run on into the
next test).
"""

from __future__ import annotations

import io
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import Result

#: How long a thread a command started may take to end after the command returned.
THREAD_GRACE = 10.0

#: One command at a time: the environment, the directory and the streams are the
#: process's, so two commands run from two threads would see each other's.
_one_at_a_time = threading.Lock()


def _text_stream() -> io.TextIOWrapper:
    """A captured stream as a pipe reads: UTF-8, not a terminal."""
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)


def _read(stream: io.TextIOWrapper) -> str:
    stream.flush()
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue().decode("utf-8")


@contextmanager
def _saved(save: Callable[[], Any], restore: Callable[[Any], None]) -> Iterator[None]:
    value = save()
    try:
        yield
    finally:
        restore(value)


def _environment(env: Mapping[str, str]) -> Any:
    def swap() -> dict[str, str]:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        return saved

    def back(saved: dict[str, str]) -> None:
        os.environ.clear()
        os.environ.update(saved)

    return _saved(swap, back)


def _directory(cwd: Path | None) -> Any:
    def swap() -> str:
        saved = os.getcwd()
        if cwd is not None:
            os.chdir(cwd)
        return saved

    return _saved(swap, os.chdir)


def _secret_registry() -> Any:
    """The registry of secret values (reconciler/log.py) starts empty, as in a new
    process, and the test's own registrations come back afterwards."""
    from reconciler import log

    def swap() -> log.SecretValues:
        saved = log._backstop
        log._backstop = log.SecretValues()
        return saved

    def back(saved: log.SecretValues) -> None:
        log._backstop = saved

    return _saved(swap, back)


def _logging() -> Any:
    """The logging set-up `log.configure` makes (structlog's configuration bound to the
    captured stderr, a handler on the root logger, warnings captured, the thread
    excepthook) is the command's; the test's comes back afterwards."""
    from reconciler import log

    def swap() -> dict[str, Any]:
        root = logging.getLogger()
        saved: dict[str, Any] = {
            "log": (log._setting, log._level),
            "handlers": list(root.handlers),
            "level": root.level,
            "capture": logging._warnings_showwarning is not None,  # type: ignore[attr-defined]
            "showwarning": warnings.showwarning,
            "excepthook": threading.excepthook,
            "structlog": _structlog_config(),
        }
        log._setting, log._level = None, logging.NOTSET
        log._generation += 1
        return saved

    def back(saved: dict[str, Any]) -> None:
        root = logging.getLogger()
        root.handlers[:] = saved["handlers"]
        root.setLevel(saved["level"])
        logging.captureWarnings(saved["capture"])
        warnings.showwarning = saved["showwarning"]
        threading.excepthook = saved["excepthook"]
        log._setting, log._level = saved["log"]
        log._generation += 1  # loggers resolved by the command resolve again
        if "structlog" in sys.modules:
            import structlog

            if saved["structlog"] is None:
                structlog.reset_defaults()
            else:
                structlog.configure(**saved["structlog"])

    return _saved(swap, back)


def _structlog_config() -> dict[str, Any] | None:
    if "structlog" not in sys.modules:
        return None
    import structlog

    return dict(structlog.get_config()) if structlog.is_configured() else None


def _process_state() -> Any:
    """Module-level state a command keeps for the rest of its process: the per-process
    prune counters of executions (the CLI's options live on its context object)."""
    from reconciler.runs import execute

    def clear() -> None:
        execute._recorded.clear()

    def swap() -> dict[str, int]:
        saved = dict(execute._recorded)
        clear()
        return saved

    def back(saved: dict[str, int]) -> None:
        clear()
        execute._recorded.update(saved)

    return _saved(swap, back)


def _signals() -> Any:
    """The agent installs handlers for SIGTERM and SIGINT; the test's come back."""
    watched = (signal.SIGTERM, signal.SIGINT)

    def swap() -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.getsignal(s) for s in watched}

    def back(saved: dict[int, Any]) -> None:
        for s, handler in saved.items():
            signal.signal(s, handler)

    return _saved(swap, back)


def _streams(argv: list[str]) -> Any:
    def swap() -> tuple[Any, ...]:
        saved = (sys.stdin, sys.stdout, sys.stderr, sys.argv)
        sys.stdin = io.StringIO("")
        sys.stdout, sys.stderr = _text_stream(), _text_stream()
        sys.argv = ["reconciler", *argv]
        return saved

    def back(saved: tuple[Any, ...]) -> None:
        sys.stdin, sys.stdout, sys.stderr, sys.argv = saved

    return _saved(swap, back)


#: Libraries whose threads live as long as the process by design, shared by every
#: caller (the Modal SDK runs its event loop on one): not the command's to end.
PROCESS_WIDE = ("synchronicity.",)


def _owner(thread: threading.Thread) -> str:
    target = getattr(thread, "_target", None)
    return getattr(target, "__module__", None) or ""


def _no_leaked_threads(before: set[threading.Thread]) -> None:
    deadline = time.monotonic() + THREAD_GRACE
    left = [
        t
        for t in threading.enumerate()
        if t not in before and not _owner(t).startswith(PROCESS_WIDE)
    ]
    for t in left:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in left if t.is_alive()]
    assert not alive, f"the command left threads running: {alive}"


_built: dict[str, Any] = {}


@contextmanager
def command_tree_built_once() -> Iterator[None]:
    """A process builds the CLI's click commands from the typer app once, when `main`
    runs (~35 ms of signatures and type hints, most of a short command's time in this
    process); here they are built the first time and reused by every later command.
    The tree keeps no state between invocations: click keeps that in each Context."""
    import typer.main

    from reconciler import cli

    build = typer.main.get_command

    def built_once(typer_instance: typer.Typer) -> Any:
        if typer_instance is not cli.app:
            return build(typer_instance)
        if "cli" not in _built:
            _built["cli"] = build(typer_instance)
        return _built["cli"]

    typer.main.get_command = built_once
    try:
        yield
    finally:
        typer.main.get_command = build


def run_in_process(args: list[str], *, env: Mapping[str, str], cwd: Path | None = None) -> Result:
    """`reconciler.cli.main(args)` with `env` as the whole environment and `cwd` as the
    working directory; its exit code, stdout and stderr."""
    from reconciler import cli

    with _one_at_a_time:
        before = set(threading.enumerate())
        with (
            _environment(env),
            _directory(cwd),
            _secret_registry(),
            _process_state(),
            _signals(),
            _logging(),
            _streams(args),
            command_tree_built_once(),
        ):
            out, err = sys.stdout, sys.stderr
            assert isinstance(out, io.TextIOWrapper) and isinstance(err, io.TextIOWrapper)
            try:
                cli.main(list(args))
                code = 0
            except SystemExit as e:
                code = _exit_code(e.code, err)
            result = Result(code, _read(out), _read(err))
        _no_leaked_threads(before)
    return result


def _exit_code(value: object, err: io.TextIOWrapper) -> int:
    """The status a process exiting with `value` would have (as `sys.exit` maps it)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    err.write(f"{value}\n")
    return 1
