"""The machine rendering: docs/plan-format.md, format_version 1, stable key order."""

from __future__ import annotations

import json

from reconciler.plan import Plan


def render_json(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
