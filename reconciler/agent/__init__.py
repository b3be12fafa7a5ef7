"""`reconciler agent`: a long-running process that keeps environments in sync with the
deploy branch (docs/agent.md).

    loop.py     the passes: fetch, plan, gate, apply; drift and self-heal; SIGTERM
    source.py   the deploy branch of origin, fetched into a clone the agent owns
    policy.py   `spec.sync` and `spec.notify` of each Environment
    notify.py   notifications through apprise, on a thread of their own
    metrics.py  the Prometheus registry served at /metrics
    server.py   /healthz, /metrics and the dashboard on one port
    run.py      wiring it all together for the command; cli.py declares the command

Nothing heavy is imported here: cli.py merges `commands` into the CLI at start-up.
"""

from reconciler.agent.cli import commands

__all__ = ["commands"]
