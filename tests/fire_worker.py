"""One firing engine in a process of its own (tests/test_fire.py): tick once at the
given time and print each execution it ran."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

from reconciler.config import load_settings
from reconciler.engine.live import ProvidersOfRecord
from reconciler.runs.fire import FireEngine
from reconciler.runs.store import open_executions
from reconciler.session import Session
from reconciler.state import open_state


def main(repo: str, url: str, at: str) -> None:
    settings = load_settings(Path(repo), state_url=url, env=dict(os.environ))
    store = open_executions(url, repo_root=settings.repo, env=settings.env)
    engine = FireEngine(settings, store, parallelism=2)
    state = open_state(url, repo_root=settings.repo, env=settings.env)
    try:
        futures = engine.tick(state, ProvidersOfRecord(Session.start(settings)).get(state),
                              datetime.fromisoformat(at))  # fmt: skip
        for f in futures:
            ex = f.result(60)
            print("fired", ex.environment, ex.id, ex.status)
    finally:
        engine.close()
        state.close()
        store.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
