"""JSON Schemas for editors (yaml-language-server), generated from the models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from reconciler.manifests import models as m

#: yaml-language-server understands draft-07 and below; we emit nothing newer.
DRAFT = "http://json-schema.org/draft-07/schema#"
BASE_ID = "https://reconciler.dev/schemas/"


def _finish(schema: dict[str, Any], name: str, title: str) -> dict[str, Any]:
    return {"$schema": DRAFT, "$id": BASE_ID + name, "title": title, **schema}


def schemas() -> dict[str, dict[str, Any]]:
    """File name → schema: one per kind, one for any manifest, one for reconciler.yaml."""
    from reconciler.config import ConfigFile

    out: dict[str, dict[str, Any]] = {}
    for kind, model in m.KINDS.items():
        name = f"{kind.lower()}.schema.json"
        out[name] = _finish(_model_schema(model), name, f"reconciler/v1 {kind}")
    union: dict[str, Any] = TypeAdapter(m.Manifest).json_schema(by_alias=True)
    union.pop("discriminator", None)
    out["manifest.schema.json"] = _finish(
        union, "manifest.schema.json", "Any reconciler/v1 manifest document"
    )
    out["config.schema.json"] = _finish(
        _model_schema(ConfigFile), "config.schema.json", "reconciler.yaml"
    )
    return out


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(by_alias=True)


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = out_dir / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written
