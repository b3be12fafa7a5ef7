"""The read-only web dashboard: `reconciler serve`, or embedded by a long-running agent.

    from reconciler.dashboard.app import make_app
    from reconciler.dashboard.refresh import Refresher

    refresher = Refresher(settings, interval=60)   # drive refresher.refresh() yourself,
    app = make_app(settings, refresher=refresher)  # or refresher.start() a thread

Pages and the JSON API under /api/ read only the refresher's last snapshot; every
document under /api/ is exactly what the matching CLI command prints with --json.
Nothing here imports Starlette until the app is made, so the CLI stays fast.
"""

from reconciler.dashboard.cli import commands

__all__ = ["commands"]
