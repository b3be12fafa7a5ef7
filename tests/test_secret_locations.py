"""Secret references found in one walk: plan fingerprints by their names and masks by
their paths, so a create's body is masked without walking it again. Whatever the spec
holds, the result must be what masking the whole body shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import init_repo, write_files
from executor_world import REPO_ENV
from hypothesis import given
from hypothesis import strategies as st

from reconciler.config import load_settings
from reconciler.engine.apply import ApplyRequest, run_apply
from reconciler.engine.plan import build_plan
from reconciler.instances import Instance, secret_locations, secret_refs
from reconciler.plan import SENSITIVE, _mask, _masked_body
from reconciler.session import Session
from reconciler.state.sqlite import SQLiteState

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


DEPLOYMENT = """---
apiVersion: reconciler/v1
kind: Deployment
metadata: {name: %s}
spec:
  environments: [dev]
  provider: registry
  model: %s
  env: {API_KEY: {secretEnv: API_KEY}}
"""


def test_a_plan_walks_only_the_specs_of_what_changed(tmp_path: Path) -> None:
    """An unchanged instance's spec is the one recorded, so its secret names are the
    record's: re-planning walks only the changed instances' specs. A rotated secret
    still changes every instance that names it."""
    repo = init_repo(tmp_path / "repo")

    def manifests(first_model: str) -> None:
        models = {"d0": first_model, "d1": "gpt-4o", "d2": "gpt-4o"}
        text = REPO_ENV + "".join(DEPLOYMENT % item for item in models.items())
        write_files(repo, {"manifests/all.yaml": text, ".gitignore": ".reconciler/\n"})

    manifests("gpt-4o")
    store = SQLiteState(tmp_path / "state.db", env={})
    try:
        first = Session.start(load_settings(repo, env={"API_KEY": "first-value"}))
        applied = run_apply(first, store, ApplyRequest())
        assert applied.exit_code == 0
        manifests("gpt-4o-mini")
        built = build_plan(
            Session.start(load_settings(repo, env={"API_KEY": "first-value"})), store
        )
        insts = built.loaded.desired.instances["dev"].values()
        assert {i.name for i in insts if "_secrets" in vars(i)} == {"d0"}
        assert [c.name for c in built.plan.environments[0].changes] == ["d0"]
        rotated = build_plan(
            Session.start(load_settings(repo, env={"API_KEY": "second-value"})), store
        )
        assert sorted(c.name for c in rotated.plan.environments[0].changes) == ["d0", "d1", "d2"]
    finally:
        store.close()
