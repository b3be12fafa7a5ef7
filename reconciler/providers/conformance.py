"""The provider contract as one check a plugin runs against its own test server.

    from reconciler.providers.conformance import check_provider

    def test_my_provider_keeps_the_contract(my_api):
        check_provider(lambda: MyProvider(config, repo_root=tmp, env=env), first, second)

`first` and `second` are two versions of one instance (same key, a change a provider
can make in place). The check walks the life of an object: absent, created, created
again (adopted: the same id, no second object), read back without drift, updated,
deleted, deleted again; `status()` says Missing before and after. `settle(provider,
provider_id)` is called after each write for providers whose objects take a while
(poll `status()` there until it is not Progressing). A broken promise raises
AssertionError naming it. Terraform's backend conformance tests are the model
(`internal/backend/testing.go`): one suite, every implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reconciler.instances import Instance
from reconciler.providers.base import CannotInvoke, Invocation, InvokeTarget, Provider

Settle = Callable[[Provider, str], None]


class ContractError(AssertionError):
    """A provider broke a promise of the contract."""


def _expect(ok: bool, promise: str) -> None:
    if not ok:
        raise ContractError(promise)


def _drift(p: Provider, inst: Instance, ident: str) -> dict[str, tuple[Any, Any]]:
    """Recorded-versus-live differences as drift computes them (recorded keys only)."""
    from reconciler.plan import field_diff

    live = p.read(inst.kind, inst.name, inst.environment, ident)
    _expect(live is not None, f"read() finds {inst.key.address} after it was written")
    assert live is not None
    body = inst.body()
    seen: Mapping[str, Any] = p.live_body(live, body)
    shown = {k: seen.get(k) for k in body}
    return {d.path: (d.before, d.after) for d in field_diff(body, shown)}


def check_invoke(p: Provider, inst: Instance, ident: str, invoke_input: Mapping[str, Any]) -> None:
    """A provider that says it can invoke runs the object it wrote and reports usage
    as counts or unknown (never negative); one that says it cannot raises CannotInvoke."""
    target = InvokeTarget(inst.environment, inst.name, ident, inst.body())
    if not p.can_invoke:
        try:
            p.invoke(target, invoke_input, 5.0)
        except CannotInvoke:
            return
        raise ContractError("invoke() of a provider without can_invoke raises CannotInvoke")
    got = p.invoke(target, invoke_input, 30.0)
    _expect(isinstance(got, Invocation), "invoke() returns an Invocation")
    _expect(got.output is not None, "invoke() returns an output")
    for count in (got.usage.input_tokens, got.usage.output_tokens):
        _expect(count is None or count >= 0, "usage counts are None or at least 0")
    _expect(got.latency >= 0, "invoke() reports a latency of at least 0")


def check_provider(
    make: Callable[[], Provider],
    first: Instance,
    second: Instance,
    *,
    settle: Settle | None = None,
    invoke_input: Mapping[str, Any] | None = None,
) -> None:
    """Run the contract against a provider made by `make` (closed at the end). With
    `invoke_input`, a Deployment is also invoked once it is written (`check_invoke`)."""
    _expect(first.key == second.key, "first and second are the same instance")
    k = first.key
    p = make()
    try:
        _expect(not p.validate(first), f"validate() accepts {k.address}: {p.validate(first)}")
        _expect(p.read(k.kind, k.name, k.environment, None) is None, "read() of nothing is None")
        _expect(
            p.status(k.kind, k.name, k.environment, None).health == "Missing",
            "status() of nothing is Missing",
        )
        ident = p.create(first)
        _expect(bool(ident), "create() returns a provider id")
        if settle:
            settle(p, ident)
        _expect(p.create(first) == ident, "create() again adopts the object: the same id")
        if settle:
            settle(p, ident)
        diff = _drift(p, first, ident)
        _expect(not diff, f"a created object reads back as created (drift: {diff})")
        if invoke_input is not None and k.kind == "Deployment":
            check_invoke(p, first, ident, invoke_input)
        p.update(second, ident)
        if settle:
            settle(p, ident)
        diff = _drift(p, second, ident)
        _expect(not diff, f"an updated object reads back as updated (drift: {diff})")
        p.delete(k.kind, k.name, k.environment, ident)
        _expect(p.read(k.kind, k.name, k.environment, ident) is None, "delete() removes it")
        p.delete(k.kind, k.name, k.environment, ident)  # gone counts as done
        _expect(
            p.status(k.kind, k.name, k.environment, ident).health == "Missing",
            "status() after delete is Missing",
        )
    finally:
        p.close()
