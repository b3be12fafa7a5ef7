# reconciler as a container image: the agent by default, or any other command.
#
#   docker build -t reconciler .
#   docker run --rm reconciler --help
#   docker run -d -p 127.0.0.1:8377:8377 --env-file agent.env reconciler
#
# The default command is the agent listening on 0.0.0.0 inside the container, so it
# refuses to start (exit 1) without RECONCILER_DASHBOARD_TOKEN: pass it at run time
# (`--env-file agent.env` or `-e RECONCILER_DASHBOARD_TOKEN`), never as a build
# argument or in this file. It guards everything but /healthz, /metrics included
# (docs/agent.md).
#
# Built from this checkout: the wheel of the distribution `ai-reconciler` is built in
# the first stage and installed alone in the second, which runs as a non-root user and
# has git (the agent fetches the manifests repo). docs/agent.md runs it next to its
# PostgreSQL (docs/agent-compose.yaml).
#
# Note: written and checked by reading on a machine without docker; not built or run
# there. CI does not build it.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
RUN pip install --no-cache-dir "build==1.2.2.post1" \
    && python -m build --wheel --outdir /dist .

FROM python:3.12-slim
# git for fetching the manifests repo, tini to reap git's processes and pass SIGTERM on
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git tini \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --home-dir /home/reconciler --uid 10001 --user-group reconciler
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/*.whl && rm -rf /tmp/dist
USER 10001:10001
WORKDIR /home/reconciler
# The agent's own clone: a volume mounted here keeps it across restarts.
RUN mkdir -p /home/reconciler/clone
ENV PYTHONUNBUFFERED=1 \
    GIT_TERMINAL_PROMPT=0
EXPOSE 8377
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8377/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["tini", "--", "reconciler", "--log-format", "json"]
CMD ["agent", "--clone", "/home/reconciler/clone", "--host", "0.0.0.0", "--port", "8377"]
