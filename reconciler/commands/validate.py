"""`reconciler validate`: every problem in the manifests, located; counts when valid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.commands.context import require_manifests
from reconciler.config import Settings
from reconciler.load import load


@dataclass(frozen=True)
class ValidateReport:
    documents: int
    instances: int
    environments: list[str]


def validate(
    settings: Settings, paths: Sequence[str] = (), ref: str | None = None
) -> ValidateReport:
    """Raises ManifestError (every problem as `path:line:col: message`) when invalid."""
    if not paths and ref is None:
        require_manifests(settings)
    d = load(settings, ref, paths=paths).desired
    return ValidateReport(d.manifests.documents, d.count(), list(d.environments))
