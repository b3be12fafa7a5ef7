"""Vendor rules in the plan (pure `plan_environment`): which fields force a replacement
and why, and deletes a provider refuses or qualifies; the built-in providers' wording
is what the golden plans hold."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from reconciler.instances import Instance, InstanceKey, spec_hash
from reconciler.plan import Change, DeleteRuleFn, plan_environment
from reconciler.providers.base import DeleteRule
from reconciler.providers.local import LocalProvider
from reconciler.state.base import AppliedRecord


def inst(name: str, provider: str = "azure", **spec: Any) -> Instance:
    return Instance("production", "Deployment", name, provider, {"model": "gpt-4o", **spec})


def record(i: Instance, provider: str | None = None) -> AppliedRecord:
    body = i.body()
    return AppliedRecord(
        environment=i.environment,
        kind=i.kind,
        name=i.name,
        provider=provider or i.provider,
        provider_id=f"id-{i.name}",
        spec=body,
        spec_hash=spec_hash(body),
        secret_fingerprints={},
        commit=None,
        run_id="r1",
        applied_at=datetime.now(UTC),
    )


def plan(
    desired: list[Instance],
    recorded: list[AppliedRecord],
    *,
    immutable: Mapping[str, Mapping[str, str]] | None = None,
    rules: Mapping[str, DeleteRuleFn] | None = None,
    protected: bool = False,
    allow_delete: bool = False,
) -> dict[str, Change]:
    ep = plan_environment(
        "production",
        {i.key: i for i in desired},
        {r.key: r for r in recorded},
        serial=1,
        protected=protected,
        allow_delete=allow_delete,
        immutable=immutable or {},
        secret_env={},
        fingerprint_key=b"k",
        delete_rules=rules,
    )
    return {c.name: c for c in ep.changes}


AZURE = {
    "model": "Azure keeps a deployment's model for life",
    "scaling.hardware": "no SKU moves in place",
}


def test_a_replace_names_each_field_and_the_vendors_reason() -> None:
    old = inst("gpt", scaling={"hardware": "Standard", "maxReplicas": 1})
    new = inst("gpt", model="gpt-4o-mini", scaling={"hardware": "GlobalStandard", "maxReplicas": 1})
    ch = plan([new], [record(old)], immutable={"azure": AZURE})["gpt"]
    assert ch.action == "replace"
    assert ch.reason == (
        "model cannot be changed in place on azure: Azure keeps a deployment's model for life; "
        "scaling.hardware cannot be changed in place on azure: no SKU moves in place"
    )
    grown = inst("gpt", scaling={"hardware": "Standard", "maxReplicas": 9})
    ch = plan([grown], [record(old)], immutable={"azure": AZURE})["gpt"]
    assert ch.action == "update" and ch.reason is None


def test_the_built_in_wording_is_unchanged() -> None:
    old = inst("r", "local", scaling={"hardware": "nvidia-l4"})
    new = inst("r", "local", scaling={"hardware": "nvidia-a10g"})
    ch = plan([new], [record(old)], immutable={"local": LocalProvider.replace_reasons()})["r"]
    assert ch.reason == "scaling.hardware cannot be changed in place on local"


def refuse(kind: str, name: str, body: Mapping[str, Any]) -> DeleteRule:
    return DeleteRule(refused=f"{name} cannot go")


def note(kind: str, name: str, body: Mapping[str, Any]) -> DeleteRule:
    return DeleteRule(note=f"deleting {name} cannot be undone")


def test_a_vendor_refuses_a_delete_even_with_allow_delete() -> None:
    gone = inst("p", "prompts")
    for protected, allow in ((False, False), (True, True)):
        ch = plan(
            [], [record(gone)], rules={"prompts": refuse}, protected=protected, allow_delete=allow
        )["p"]
        assert ch.action == "delete" and ch.refused == "p cannot go"
    ch = plan([], [record(gone)], rules={"prompts": note}, protected=True)["p"]
    assert ch.reason == "deleting p cannot be undone"
    assert ch.refused == "production is protected: deleting deployment.p needs --allow-delete"
    ch = plan([], [record(gone)], rules={"prompts": note})["p"]
    assert ch.refused is None and ch.reason == "deleting p cannot be undone"


def test_a_replace_carries_the_old_providers_delete_rule() -> None:
    old = inst("x", "prompts")
    new = inst("x", "azure", scaling={"hardware": "Standard"})
    ch = plan([new], [record(old)], rules={"prompts": refuse, "azure": note})["x"]
    assert ch.action == "replace"
    assert ch.reason == "provider changes from prompts to azure"
    assert (
        ch.refused == "replacing deletes the old object on prompts, which is refused: x cannot go"
    )
    ch = plan([new], [record(old)], rules={"prompts": note})["x"]
    assert ch.reason == "provider changes from prompts to azure; deleting x cannot be undone"
    assert ch.refused is None


def test_no_rule_for_a_provider_no_longer_declared() -> None:
    ch = plan([], [record(inst("old", "retired"))], rules={"prompts": refuse})["old"]
    assert ch.refused is None and ch.reason is None
    assert ch.key == InstanceKey("production", "Deployment", "old")
