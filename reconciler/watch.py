"""`reconciler watch`: re-validate and re-plan on every save, re-reading only what changed.

Parsed documents are cached per file and their validated models per document, so a
save costs one file's parse plus the cross-document checks, expansion and the plan.
Template files are read fresh on every pass (expansion asks for them).
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

from reconciler.config import Settings
from reconciler.gitrepo import MANIFEST_SUFFIXES, ManifestRepo, OutsideRepoError
from reconciler.manifests import (
    Desired,
    Diagnostic,
    ManifestError,
    desired_from_documents,
    gc_paused,
)
from reconciler.manifests.validate import ModelMemo, parse_files
from reconciler.manifests.yamlload import YMap

#: Saves between full collections (`ManifestCache.settle`): a save leaves ~300 objects
#: in reference cycles, so the frozen heap never holds more than a few thousand.
COLLECT_EVERY = 25


@dataclass
class _Parsed:
    data: bytes
    docs: list[tuple[str, YMap]]
    problems: list[Diagnostic]


@dataclass
class ManifestCache:
    """The working tree's manifests, kept parsed between saves."""

    settings: Settings
    repo: ManifestRepo = field(init=False)
    _files: dict[str, _Parsed] = field(default_factory=dict, init=False)
    _memo: ModelMemo = field(default_factory=dict, init=False)
    _saves: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.repo = ManifestRepo(self.settings.repo)

    def refresh(self, changed: Iterable[Path] | None = None) -> Desired:
        """Re-read `changed` files (everything when None); raises ManifestError."""
        with gc_paused():
            if changed is None:
                current = self.repo.files_at(None, self.settings.manifest_paths)
                self._files = {p: self._parse(p, data) for p, data in current.items()}
                self._files.update((p, _refused(p, why)) for p, why in current.refused.items())
            else:
                for path in changed:
                    self._reread(path)
            self._forget_stale_models()
            problems = [d for f in self._files.values() for d in f.problems]
            docs = [d for p in sorted(self._files) for d in self._files[p].docs]
            desired = desired_from_documents(
                docs, lambda p: self.repo.read_file_at(None, p), problems, self._memo
            )
            # As load_desired does: what was loaded lives until the next save, the
            # cache as long as the watch. Out of the cyclic GC's view, a save's
            # allocations no longer trigger full collections that rescan it all (~300 ms
            # every third save at 10,000 instances). `settle` frees the few reference
            # cycles a save leaves (a field diff's) now and then.
            gc.freeze()
        if problems:
            raise ManifestError(problems)
        return desired

    def settle(self) -> None:
        """Called between saves, once a save's plan is out: every `COLLECT_EVERY`
        saves, one full collection frees the reference cycles frozen meanwhile."""
        self._saves += 1
        if self._saves % COLLECT_EVERY == 0:
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    def _reread(self, path: Path) -> None:
        try:  # not resolve(): a symlink must be judged by where it is, not where it leads
            rel = Path(os.path.abspath(path)).relative_to(self.settings.repo).as_posix()
        except ValueError:
            return
        if not rel.endswith(MANIFEST_SUFFIXES) or not self._in_paths(rel):
            return
        try:
            data = self.repo.read_file_at(None, rel)
        except OutsideRepoError as e:
            self._files[rel] = _refused(rel, e.message)
            return
        if data is None:
            self._files.pop(rel, None)
            return
        old = self._files.get(rel)
        if old is None or old.data != data:
            self._files[rel] = self._parse(rel, data)

    def _in_paths(self, rel: str) -> bool:
        return any(
            rel == p.strip("/") or rel.startswith(p.strip("/") + "/") or p in (".", "")
            for p in self.settings.manifest_paths
        )

    @staticmethod
    def _parse(rel: str, data: bytes) -> _Parsed:
        problems: list[Diagnostic] = []
        return _Parsed(data, parse_files({rel: data}, problems), problems)

    def _forget_stale_models(self) -> None:
        alive = {id(raw) for f in self._files.values() for _, raw in f.docs}
        for key in [k for k in self._memo if k not in alive]:
            del self._memo[key]


def _refused(rel: str, why: str) -> _Parsed:
    return _Parsed(b"", [], [Diagnostic(rel, 1, 1, why)])


def watch_paths(settings: Settings) -> list[Path]:
    """The manifest paths (templates live beside them) that exist, else the repo."""
    paths = [settings.repo / p for p in settings.manifest_paths]
    existing = [p for p in paths if p.exists()]
    return existing or [settings.repo]


def run(
    settings: Settings,
    on_change: Callable[[Iterable[Path] | None], None],
    *,
    stop: threading.Event | None = None,
    debounce_ms: int = 50,
) -> None:
    """Call `on_change(None)` once, then with the changed paths after each save.

    The first pass runs once the watcher is live (its first timeout tick), so a save
    made right after the first plan is printed is never missed.
    """
    live = False
    for changes in watchfiles.watch(
        *watch_paths(settings),
        debounce=debounce_ms,
        step=10,
        stop_event=stop,
        raise_interrupt=True,
        rust_timeout=100,
        yield_on_timeout=True,
        watch_filter=lambda _change, path: "/." not in path,
    ):
        if not live:
            live = True
            on_change(None)
        if changes:
            on_change(sorted({Path(p) for _, p in changes}))
