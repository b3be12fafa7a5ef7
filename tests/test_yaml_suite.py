"""The loader against the official YAML test suite (../shared/yaml-test-suite).

Every case must either load or be refused with a located YamlProblem: no other
exception, no hang. Invalid inputs must be refused, and valid inputs that load must
give exactly the suite's JSON, except where libyaml (the C parser underneath) is
known to be wrong; those cases are listed here by id with the reason.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.manifests.yamlload import YamlProblem, load_documents

SUITE = Path(__file__).resolve().parents[2] / "shared" / "yaml-test-suite" / "cases"

#: Invalid inputs libyaml accepts (the suite README lists the first 12 for ruamel and
#: PyYAML alike; S98Z and X4QW are scanner leniencies of libyaml's C scanner).
ACCEPTED_INVALID = {
    "9C9N",
    "9JBA",
    "CVW2",
    "DK95/01",
    "EB22",
    "G5U8",
    "MUS6/01",
    "QB6E",
    "RHX7",
    "SU5Z",
    "Y79Y/003",
    "YJV2",
    "S98Z",
    "X4QW",
}
#: Valid inputs libyaml reads differently from the spec (its scanner, not our resolver).
MISREAD_VALID = {"652Z", "HM87/01", "JEF9/02", "L24T/01", "Y2GN"}

pytestmark = pytest.mark.skipif(not SUITE.is_dir(), reason="shared/yaml-test-suite not present")


def _cases() -> Iterator[Path]:
    if not SUITE.is_dir():
        return
    for d in sorted(SUITE.iterdir()):
        if not d.is_dir():
            continue
        subs = sorted(p for p in d.iterdir() if p.is_dir() and p.name.isdigit())
        yield from subs or [d]


CASES = list(_cases())


def _json_docs(text: str) -> list[Any]:
    dec, i, out = json.JSONDecoder(), 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        value, i = dec.raw_decode(text, i)
        out.append(value)


def _load(data: bytes) -> list[Any]:
    def on_alarm(*_: object) -> None:
        raise TimeoutError("loader hung")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(5)
    try:
        return [d.data for d in load_documents(data)]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_suite_is_complete() -> None:
    assert len(CASES) == 402


def test_every_case_loads_or_is_refused_with_a_position() -> None:
    stats = {"refused": 0, "loaded": 0}
    wrong: list[str] = []
    for case in CASES:
        cid = case.relative_to(SUITE).as_posix()
        invalid = (case / "error").exists()
        try:
            docs = _load((case / "in.yaml").read_bytes())
        except YamlProblem as p:
            assert p.line >= 1 and p.col >= 1 and p.message, cid
            stats["refused"] += 1
            continue
        stats["loaded"] += 1
        if invalid and cid not in ACCEPTED_INVALID:
            wrong.append(f"{cid}: invalid input accepted")
        if not invalid and (case / "in.json").exists() and cid not in MISREAD_VALID:
            expected = _json_docs((case / "in.json").read_text())
            if json.loads(json.dumps(docs)) != expected:
                wrong.append(f"{cid}: loaded {docs!r}, suite says {expected!r}")
    assert not wrong, "\n".join(wrong)
    assert stats["refused"] >= 94 - len(ACCEPTED_INVALID)
    assert stats["loaded"] >= 220


@pytest.mark.parametrize("cid", sorted(ACCEPTED_INVALID | MISREAD_VALID))
def test_known_exceptions_are_still_exceptions(cid: str) -> None:
    """If libyaml gets fixed, these lists must shrink (so they never hide a regression)."""
    case = SUITE / cid
    docs = _load((case / "in.yaml").read_bytes())
    if cid in MISREAD_VALID:
        assert json.loads(json.dumps(docs)) != _json_docs((case / "in.json").read_text())


def test_glued_comment_after_yaml_directive_is_refused_with_a_position() -> None:
    """MUS6/00: libyaml takes `#` right after the version for a comment; YAML does not."""
    with pytest.raises(YamlProblem) as e:
        _load((SUITE / "MUS6" / "00" / "in.yaml").read_bytes())
    assert (e.value.line, e.value.col) == (1, 10)
    assert "space before '#'" in e.value.message
    assert _load(b"%YAML 1.2 # spaced\n---\na: 1\n") == [{"a": 1}]
