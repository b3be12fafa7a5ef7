"""Manifests: load → validate → expand, every problem reported at once with its position.

Public API: `load_desired(files, read_file)` returns the `Desired` state or raises
`ManifestError` carrying every `Diagnostic` sorted by file and line.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from reconciler.manifests.diagnostics import Diagnostic, ManifestError
from reconciler.manifests.expand import Desired, ReadFile, deep_merge, expand
from reconciler.manifests.validate import (
    Manifests,
    ModelMemo,
    parse_files,
    validate_documents,
)
from reconciler.manifests.yamlload import YMap

__all__ = [
    "Desired",
    "Diagnostic",
    "ManifestError",
    "Manifests",
    "ReadFile",
    "deep_merge",
    "desired_from_documents",
    "full_collections_deferred",
    "gc_paused",
    "load_desired",
]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Loading allocates millions of small acyclic objects that all stay alive: the
    cyclic GC would rescan the growing heap again and again (measured: 40% of the
    time). Nothing here makes cycles, so pause it while loading."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_deferred = 0
_deferred_lock = threading.Lock()
_threshold = gc.get_threshold()


@contextmanager
def full_collections_deferred() -> Iterator[None]:
    """Planning keeps what it builds (a change per instance) but also leaves reference
    cycles (each field diff's), so the GC cannot simply be paused. Young collections
    go on and free those cycles; full ones, which rescan everything built so far
    each time, wait until the block ends. Nested and concurrent blocks share one
    deferral."""
    global _deferred, _threshold
    with _deferred_lock:
        if not _deferred:
            _threshold = gc.get_threshold()
            gc.set_threshold(_threshold[0], _threshold[1], 1 << 30)
        _deferred += 1
    try:
        yield
    finally:
        with _deferred_lock:
            _deferred -= 1
            if not _deferred:
                gc.set_threshold(*_threshold)


def load_desired(files: Mapping[str, bytes], read_file: ReadFile) -> Desired:
    """Parse, validate and expand manifest files (repo-relative path → bytes)."""
    problems: list[Diagnostic] = []
    with gc_paused():
        docs = parse_files(files, problems)
        desired = desired_from_documents(docs, read_file, problems)
        # What was just loaded lives until the command ends: take it out of the cyclic
        # GC's view, or every later allocation (state, plan) pays for rescanning it.
        gc.freeze()
    if problems:
        raise ManifestError(problems)
    return desired


def desired_from_documents(
    docs: Iterable[tuple[str, YMap]],
    read_file: ReadFile,
    problems: list[Diagnostic],
    memo: ModelMemo | None = None,
) -> Desired:
    """Validate and expand parsed documents; problems are appended, not raised."""
    manifests = validate_documents(docs, problems, memo)
    return expand(manifests, read_file, problems)
