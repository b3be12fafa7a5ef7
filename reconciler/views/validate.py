"""`validate` reports (problems are errors, printed by the CLI's error path)."""

from __future__ import annotations

from reconciler.engine.validate import ValidateReport


def human(r: ValidateReport) -> str:
    return (
        f"valid: {r.documents} documents, {r.instances} instances, "
        f"{len(r.environments)} environments ({', '.join(r.environments)})\n"
    )
