"""What every strict, camelCase document model shares (manifests, policy, config files).

Kept outside `reconciler.manifests` so the approval policy, which the Environment model
embeds, can use it without an import cycle.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class StrictModel(BaseModel):
    """Unknown fields refused, no type coercion, immutable, camelCase aliases."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
    )


def typed_text(value: Any) -> Any:
    """A YAML number in a string field becomes the text the user typed (`1.10`, `012`):
    the loader's numbers carry it as `.text`."""
    if isinstance(value, str):
        return value
    text = getattr(value, "text", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and isinstance(text, str):
        return text
    return value
