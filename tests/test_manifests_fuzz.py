"""Property: any mutation of a valid manifests repo gives a valid load or a
ManifestError with located diagnostics, never any other exception."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.manifests import ManifestError, load_desired

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = {
    p.relative_to(ROOT).as_posix(): p.read_bytes()
    for p in sorted((ROOT / "manifests").rglob("*"))
    if p.is_file()
}
YAML_FILES = sorted(k for k in EXAMPLE if k.endswith(".yaml"))
NOISE = [
    ":",
    "-",
    " ",
    "\t",
    "{",
    "}",
    "[",
    "]",
    "&a",
    "*a",
    "!!",
    "'",
    '"',
    "\n",
    "#",
    "%",
    "|",
    ">",
    "@",
    "?",
    ",",
    "\x00",
    "\xff",
    "---\n",
    "<<: *a",
    "0x1",
    "no",
]


def _read(rel: str) -> bytes | None:
    return EXAMPLE.get(rel)


def _check(files: dict[str, bytes]) -> None:
    try:
        desired = load_desired(files, _read)
    except ManifestError as e:
        assert e.diagnostics
        for d in e.diagnostics:
            assert d.line >= 1 and d.col >= 1 and d.message and d.path in files
        return
    assert desired.environments


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    file=st.sampled_from(YAML_FILES),
    edits=st.lists(
        st.tuples(
            st.floats(0, 1),
            st.sampled_from(["insert", "delete", "dup-line"]),
            st.sampled_from(NOISE),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_text_mutations_only_give_diagnostics(file: str, edits: list[Any]) -> None:
    text = EXAMPLE[file].decode("utf-8", "surrogateescape")
    for where, op, noise in edits:
        i = int(where * len(text))
        if op == "insert":
            text = text[:i] + noise + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 + len(noise) % 7 :]
        else:
            lines = text.split("\n")
            j = int(where * (len(lines) - 1))
            lines.insert(j, lines[j])
            text = "\n".join(lines)
    files = dict(EXAMPLE)
    files[file] = text.encode("utf-8", "surrogateescape")
    _check(files)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file=st.sampled_from(YAML_FILES), pick=st.floats(0, 1), value=json_values, data=st.data())
def test_value_mutations_only_give_diagnostics(
    file: str, pick: float, value: Any, data: st.DataObject
) -> None:
    docs = list(yaml.safe_load_all(EXAMPLE[file]))
    d = data.draw(st.integers(0, len(docs) - 1))
    doc = copy.deepcopy(docs[d])
    paths = _paths(doc)
    target = paths[int(pick * (len(paths) - 1))]
    if not target:
        doc = value
    else:
        parent = doc
        for p in target[:-1]:
            parent = parent[p]
        parent[target[-1]] = value
    docs[d] = doc
    files = dict(EXAMPLE)
    files[file] = yaml.safe_dump_all(docs, allow_unicode=True).encode()
    _check(files)
