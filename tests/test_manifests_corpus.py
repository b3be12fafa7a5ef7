"""The bad-input corpus: each case file states the exact diagnostics it must produce.

A case is `tests/corpus/bad/NAME.yaml`, loaded together with the valid
`tests/corpus/_base.yaml`; its leading `# expect: LINE:COL: message` lines are the
complete list of diagnostics (message compared as a prefix) for that file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.manifests import Diagnostic, ManifestError, load_desired

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"
CASES = sorted((CORPUS / "bad").glob("*.yaml"))
EXPECT = re.compile(rb"^# expect: (\d+):(\d+): (.*)$", re.M)


def _read(rel: str) -> bytes | None:
    p = ROOT / rel
    return p.read_bytes() if p.is_file() else None


def diagnostics_for(case: Path) -> list[Diagnostic]:
    rel = case.relative_to(ROOT).as_posix()
    files = {
        "tests/corpus/_base.yaml": (CORPUS / "_base.yaml").read_bytes(),
        rel: case.read_bytes(),
    }
    try:
        load_desired(files, _read)
    except ManifestError as e:
        return e.diagnostics
    return []


def test_base_is_valid() -> None:
    files = {"tests/corpus/_base.yaml": (CORPUS / "_base.yaml").read_bytes()}
    desired = load_desired(files, _read)
    assert desired.count() == 2


def test_corpus_covers_every_error_class() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_input(case: Path) -> None:
    data = case.read_bytes()
    expected = [
        (int(m.group(1)), int(m.group(2)), m.group(3).decode()) for m in EXPECT.finditer(data)
    ]
    assert expected, f"{case.name} states no expectations"
    rel = case.relative_to(ROOT).as_posix()
    got = diagnostics_for(case)
    assert all(d.path == rel for d in got), [str(d) for d in got if d.path != rel]
    assert len(got) == len(expected), "\n".join(str(d) for d in got)
    for (line, col, message), d in zip(sorted(expected), got, strict=True):
        assert (d.line, d.col) == (line, col), str(d)
        assert d.message.startswith(message), f"{d}\n  expected: {message}"


def test_huge_file_is_refused_without_parsing() -> None:
    from reconciler.manifests.yamlload import MAX_FILE_BYTES

    files = {"big.yaml": b"# " + b"x" * MAX_FILE_BYTES}
    with pytest.raises(ManifestError) as e:
        load_desired(files, _read)
    assert str(e.value.diagnostics[0]).startswith("big.yaml:1:1: file is larger than")


def test_deep_nesting_is_refused_not_crashing() -> None:
    depth = 100_000  # libyaml's own composer overflows the C stack near 30k levels
    files = {"deep.yaml": b"[" * depth + b"]" * depth}
    with pytest.raises(ManifestError) as e:
        load_desired(files, _read)
    assert "nesting deeper than 64 levels" in str(e.value.diagnostics[0])


def test_errors_from_many_files_are_sorted_and_all_reported() -> None:
    files = {rel.relative_to(ROOT).as_posix(): rel.read_bytes() for rel in CASES}
    files["tests/corpus/_base.yaml"] = (CORPUS / "_base.yaml").read_bytes()
    with pytest.raises(ManifestError) as e:
        load_desired(files, _read)
    diags = e.value.diagnostics
    assert diags == sorted(diags, key=lambda d: (d.path, d.line, d.col, d.message))
    assert {d.path for d in diags} >= {c.relative_to(ROOT).as_posix() for c in CASES}
