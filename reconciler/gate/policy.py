"""The policy of record: what an environment is judged by is never what the change under
judgement says (docs/design.md, "The gate").

A policy is the environment's spec (protection, approvals, deploy windows, overrides)
plus the approval settings of `reconciler.yaml` (where approvals come from). Every run
records the policy it applied; the newest applied run's is the policy of record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from reconciler.config import ApprovalsConfig
from reconciler.manifests.models import EnvironmentSpec


def policy_document(spec: EnvironmentSpec, approvals: ApprovalsConfig) -> dict[str, Any]:
    """The recorded form: the spec without its description, and the approval source.
    The `file` source's path is not part of it: it never comes from the repo."""
    return {
        "environment": spec.model_dump(mode="json", by_alias=True, exclude={"description"}),
        "approvals": {"source": approvals.source, "repository": approvals.repository},
    }


@dataclass(frozen=True)
class Policy:
    """A policy and where it came from (for the verdict's explanation)."""

    spec: EnvironmentSpec
    approvals: ApprovalsConfig
    #: "run <id> (commit <sha>)", "commit <sha> (before the change)", "the change itself"
    origin: str

    @property
    def document(self) -> dict[str, Any]:
        return policy_document(self.spec, self.approvals)

    def same_as(self, other: Policy) -> bool:
        return _canonical(self.document) == _canonical(other.document)

    @classmethod
    def from_document(cls, doc: dict[str, Any], origin: str) -> Policy:
        """A recorded policy; one that no longer validates fails closed (StateError)."""
        from pydantic import ValidationError

        from reconciler.errors import StateError

        try:
            spec = EnvironmentSpec.model_validate(doc["environment"], strict=False)
            approvals = ApprovalsConfig.model_validate(doc["approvals"], strict=False)
        except (KeyError, TypeError, ValidationError) as e:
            raise StateError(f"the policy recorded by {origin} cannot be read: {e}") from None
        return cls(spec, approvals, origin)


def _canonical(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))
