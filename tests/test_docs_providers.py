"""docs/providers.md's example plugin works as written: it keeps the contract
(check_provider) against a small stand-in of its API, and its problems are located."""

from __future__ import annotations

import itertools
import re
import types
from pathlib import Path
from typing import Any

from conftest import ROOT
from fakes.loopback import Answer, LoopbackServer, Request

from reconciler.instances import Instance, ProviderConfig
from reconciler.providers.base import Problem, Provider
from reconciler.providers.conformance import check_provider

GUIDE = (ROOT / "docs" / "providers.md").read_text()


def example_module() -> types.ModuleType:
    blocks = re.findall(r"^```python\n(.*?)^```", GUIDE, flags=re.MULTILINE | re.DOTALL)
    source = next(b for b in blocks if "class AcmeServeProvider" in b)
    module = types.ModuleType("acme_reconciler_provider")
    exec(compile(source, "docs/providers.md", "exec"), module.__dict__)
    return module


class FakeAcme(LoopbackServer):
    """`/services/{environment}/{name}`: PUT create-or-update, GET, DELETE."""

    def __init__(self) -> None:
        super().__init__()
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def route(self, req: Request) -> Answer:
        if req.authorization != "Bearer acme-token":
            return Answer(401, {"error": "unauthorised"})
        parts = req.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "services":
            return Answer(404, {"error": "no route"})
        key = (parts[1], parts[2])
        current = self.services.get(key)
        if req.method == "GET":
            return Answer(200, current) if current else Answer(404, {"error": "not found"})
        if req.method == "PUT":
            ident = current["id"] if current else f"svc-{next(self._ids)}"
            self.services[key] = {**req.body, "id": ident, "state": "ready"}
            return Answer(200 if current else 201, self.services[key])
        if req.method == "DELETE":
            self.services.pop(key, None)
            return Answer(204)
        return Answer(405, {"error": "method"})


def test_the_guides_example_keeps_the_contract(tmp_path: Path) -> None:
    cls = example_module().AcmeServeProvider
    assert issubclass(cls, Provider) and cls.type_name == "acme-serve"
    spec = {"provider": "acme", "model": "m", "env": {}, "enabled": True, "risk": "low"}
    first, second = (
        Instance("prod", "Deployment", "svc", "acme", {**spec, "scaling": {"hardware": hw}})
        for hw in ("cpu", "cpu")
    )
    second = Instance("prod", "Deployment", "svc", "acme", {**second.spec, "model": "m2"})
    with FakeAcme() as api:
        config = ProviderConfig(
            "acme", "acme-serve", "prod", {"baseUrl": api.url}, {"tokenEnv": "ACME_TOKEN"}
        )
        env = {"ACME_TOKEN": "acme-token"}
        check_provider(lambda: cls(config, repo_root=tmp_path, env=env), first, second)
        assert all("acme-token" not in repr(r) for r in api.requests)
    bare = cls(ProviderConfig("acme", "acme-serve", "prod"), repo_root=tmp_path, env={})
    fields = {p.field for p in bare.validate(first) if isinstance(p, Problem)}
    assert fields == {("config",), ("credentials",)}
    assert cls.replace_reasons() == {
        "scaling.hardware": "Acme Serve cannot move a service to other hardware"
    }
