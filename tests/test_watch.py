"""`reconciler watch` through the real CLI: start, save, see the new plan, stop."""

from __future__ import annotations

import gc
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

from conftest import run_cli


class _Lines:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        t.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.q.put(line)

    def until(self, needle: str, timeout: float = 30) -> str:
        """Lines up to the first containing `needle` (bounded wait)."""
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            got.append(line)
            self.seen.append(line)
            if needle in line:
                return "".join(got)
        raise AssertionError(f"no {needle!r} within {timeout}s; saw:\n{''.join(self.seen)}")


def test_watch_replans_on_save_and_stops_cleanly(example_repo: Path) -> None:
    assert run_cli(["--repo", str(example_repo), "apply", "--env", "dev"]).code == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--repo", str(example_repo), "watch", "-e", "dev"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        lines = _Lines(proc)
        first = lines.until("planned in")
        assert "no changes" in first
        chat = example_repo / "manifests/deployments/support-chat.yaml"
        chat.write_text(chat.read_text().replace("maxTokens: 400", "maxTokens: 512"))
        changed = lines.until("planned in")
        assert "support-chat" in changed and "512" in changed
        chat.write_text(chat.read_text().replace("model: gpt-4o-mini", "model: [unclosed"))
        broken = lines.until("watching for the next save")
        assert "manifests/deployments/support-chat.yaml:" in broken
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(15)
    assert code == 0


class _Cycle:
    """An object in a reference cycle: only the cyclic GC frees it."""

    def __init__(self) -> None:
        self.me = self


def test_between_saves_the_cache_stays_out_of_the_gcs_view_and_cycles_are_freed(
    example_repo: Path,
) -> None:
    """A save must not pay for the cyclic GC rescanning the whole cache (it is frozen
    after each refresh), yet what a save leaves in reference cycles is freed within
    COLLECT_EVERY saves. Counted in objects, never timed."""
    from reconciler.config import load_settings
    from reconciler.watch import COLLECT_EVERY, ManifestCache

    cache = ManifestCache(load_settings(example_repo, env={}))
    try:
        cache.refresh(None)
        parsed = next(iter(cache._files.values())).docs[0][1]
        assert not any(o is parsed for o in gc.get_objects())  # frozen: never rescanned
        left = weakref.ref(_Cycle())  # garbage a save leaves behind, frozen with it
        chat = example_repo / "manifests/deployments/support-chat.yaml"
        chat.write_text(chat.read_text().replace("maxTokens: 400", "maxTokens: 512"))
        cache.refresh([chat])
        gc.collect()
        assert left() is not None  # a collection between saves does not reach it
        for _ in range(COLLECT_EVERY):
            cache.settle()
        assert left() is None
    finally:
        gc.unfreeze()
