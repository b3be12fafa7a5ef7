"""What the vendor provider tests share: a builder of providers pointed at a stand-in,
whose waits are recorded instead of slept, closed when the test ends."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from reconciler.instances import ProviderConfig
from reconciler.providers.vendor import VendorProvider

P = TypeVar("P", bound=VendorProvider[Any])


class Made(Generic[P]):
    """`make(url, environment, env=..., **config)`: a `cls` provider named `name`, its
    config `base(url)` plus `config`; `sleeps` holds every wait it asked for."""

    def __init__(
        self,
        cls: type[P],
        name: str,
        type_name: str,
        base: Callable[[str], dict[str, Any]],
        credentials: Mapping[str, str],
        env: Mapping[str, str],
    ) -> None:
        self.cls, self.name, self.type_name = cls, name, type_name
        self.base, self.credentials, self.env = base, dict(credentials), dict(env)
        self.sleeps: list[float] = []
        self.made: list[P] = []
        #: The providers' repository root (Azure's account locks go under it).
        self.root = Path(tempfile.mkdtemp(prefix="vendor-world-"))

    def __call__(
        self,
        url: str,
        environment: str = "production",
        *,
        env: Mapping[str, str] | None = None,
        **config: Any,
    ) -> P:
        cfg = {**self.base(url), **config}
        p = self.cls(
            ProviderConfig(self.name, self.type_name, environment, cfg, dict(self.credentials)),
            repo_root=self.root,
            env=self.env if env is None else env,
            sleep=self.sleeps.append,
        )
        self.made.append(p)
        return p

    def close(self) -> None:
        for p in self.made:
            p.close()
        shutil.rmtree(self.root, ignore_errors=True)


class FakeTime:
    """A clock that moves only when the provider sleeps: a test never waits for real."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
