"""Secret references found in one walk: plan fingerprints by their names and masks by
their paths, so a create's body is masked without walking it again. Whatever the spec
holds, the result must be what masking the whole body shows."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from reconciler.instances import Instance, secret_locations, secret_refs
from reconciler.plan import SENSITIVE, _mask, _masked_body

NAMES = st.sampled_from(["A_KEY", "B_TOKEN", "C"])
REF = st.builds(lambda n: {"secretEnv": n}, NAMES)
NOT_A_REF = st.one_of(
    st.builds(lambda n: {"secretEnv": n, "note": "two keys"}, NAMES),
    st.just({"secretEnv": 7}),
    st.just({}),
)
LEAF = st.one_of(st.text(max_size=4), st.integers(), st.booleans(), st.none(), REF, NOT_A_REF)
JSON = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["env", "x", "input", "secretEnv", "labels"]), inner),
    ),
    max_leaves=20,
)
SPECS = st.dictionaries(
    st.sampled_from(["model", "env", "options", "input", "labels", "name"]), JSON
)


def reference_names(value: Any) -> set[str]:
    """The rule, written plainly: a mapping of exactly `secretEnv` to text is a reference."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("secretEnv"), str):
            return {value["secretEnv"]}
        return set().union(*(reference_names(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(reference_names(v) for v in value))
    return set()


def instance(spec: dict[str, Any]) -> Instance:
    return Instance("dev", "Deployment", "chat", "local", spec, labels={"team": "a"})


@given(spec=SPECS)
def test_masking_by_path_shows_what_masking_the_whole_body_shows(spec: dict[str, Any]) -> None:
    inst = instance(spec)
    before = repr(spec)
    assert _masked_body(inst) == _mask(inst.body())
    assert repr(spec) == before  # the instance's own spec is never edited


@given(spec=SPECS)
def test_names_and_paths_come_from_one_walk(spec: dict[str, Any]) -> None:
    inst = instance(spec)
    assert inst.secret_names == sorted(reference_names(spec)) == secret_refs(spec)
    for path, name in inst.secret_locations:
        node: Any = spec
        for part in path:
            node = node[part]
        assert node == {"secretEnv": name}


def test_a_reference_in_a_list_under_a_shared_mapping() -> None:
    shared = {"keys": [{"secretEnv": "A_KEY"}, "plain"]}
    a, b = instance({"input": shared}), instance({"input": shared, "env": shared})
    assert _masked_body(a)["input"] == {"keys": [SENSITIVE, "plain"]}
    assert _masked_body(b)["env"] == _masked_body(b)["input"] == {"keys": [SENSITIVE, "plain"]}
    assert shared == {"keys": [{"secretEnv": "A_KEY"}, "plain"]}
    assert secret_locations({"secretEnv": "C"}) == [((), "C")]
    assert secret_locations("text") == [] and secret_locations(None) == []
