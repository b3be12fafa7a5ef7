"""The pytest plugin serving the dashboard fixture repo (`pytest_plugins`), shared by
the browser tests and the API tests: one build and one server per test process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dashboard_fixture import FORGE, REGISTRY_TOKEN, DashboardRepo, build
from dashboard_server import Server, start
from fakes.deploy_api import FakeDeployApi


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DashboardRepo, Server]]:
    """The repo above, served by `reconciler serve` (live reads once, at start)."""
    with FakeDeployApi(token=REGISTRY_TOKEN) as api:
        d = build(tmp_path_factory.mktemp("dashboard"), api)
        env = {**d.env, "GITHUB_REPOSITORY": "acme/manifests", "GITHUB_SERVER_URL": FORGE}
        server = start(d.repo, env, "--refresh", "1h")
        try:
            yield d, server
        finally:
            err = server.stop()
            assert "Traceback" not in err, err
