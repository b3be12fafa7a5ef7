"""`promote`: each deployment's digest, what the target would change, its usage beside
the target's current instance, and why one is not eligible yet."""

from __future__ import annotations

import json as _json

from reconciler.engine.promote import PromoteReport
from reconciler.views.text import join_lines


def _short(digest: str | None) -> str:
    return "none" if digest is None else digest.removeprefix("sha256:")[:12]


def human(r: PromoteReport) -> str:
    lines = [f"promote {r.source} → {r.target} ({r.policy})"]
    if not r.items:
        lines.append(f"  nothing applied in {r.source} is deployed to {r.target}")
    for i in r.items:
        state = "eligible" if i.blocked is None else f"NOT ELIGIBLE: {i.blocked}"
        if not i.changes and i.digest == i.target_digest:
            state = f"{r.target} runs it already"
        lines.append(
            f"  deployment.{i.deployment}: {_short(i.target_digest)} → {_short(i.digest)}: {state}"
        )
        lines.extend(f"      {f}: {old!r} → {new!r}" for f, (old, new) in i.changes.items())
        usage = i.usage_lines(r.source, r.target)
        deeper = "  " if i.deltas else ""  # the deltas under their heading
        lines.append(f"      {usage[0]}")
        lines.extend(f"      {deeper}{line}" for line in usage[1:])
    if r.commit is not None:
        lines.append(f"{r.commit[:12]} on branch {r.branch}: the manifest edit; apply re-checks")
        if r.pushed:
            lines.append(f"pushed {r.branch} to origin")
        if r.pull_request is not None:
            lines.append(f"pull request #{r.pull_request}: {r.pull_request_url}")
    elif any(i.changes and i.blocked is None for i in r.items):
        lines.append("next: reconciler promote ... --branch NAME writes the manifest edit")
    return join_lines(lines)


def json(r: PromoteReport) -> str:
    return _json.dumps(r.document(), indent=2) + "\n"
