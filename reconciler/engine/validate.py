"""`reconciler validate`: every problem in the manifests, located; counts when valid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.engine.context import require_manifests
from reconciler.session import Session


@dataclass(frozen=True)
class ValidateReport:
    documents: int
    instances: int
    environments: list[str]


def validate(session: Session, paths: Sequence[str] = (), ref: str | None = None) -> ValidateReport:
    """Raises ManifestError (every problem as `path:line:col: message`) when invalid."""
    if not paths and ref is None:
        require_manifests(session)
    d = session.load(ref, paths=paths).desired
    return ValidateReport(d.manifests.documents, d.count(), list(d.environments))
