"""`python -m reconciler`, and the `reconciler` command (its console script calls `main`)."""

from __future__ import annotations

import gc


def main() -> None:
    """Start-up loads a few hundred thousand objects (modules, classes, pydantic
    schemas) that live as long as the process: with the cyclic GC running, it scans
    them again and again while they load (~30 ms of every command). So they load
    with it paused, and are then frozen out of its view, which also keeps every
    later collection from rescanning them. (`reconciler.manifests.gc_paused` does the
    same for loading; it cannot be used here, importing it is part of start-up.)"""
    gc.disable()
    try:
        from reconciler.cli import main as run
    finally:
        gc.freeze()
        gc.enable()
    run()


if __name__ == "__main__":
    main()
