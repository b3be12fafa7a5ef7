"""YAML loading with positions, at C speed, safe against hostile input.

ruamel.yaml's C (libyaml) parser emits events; we build the Python values from them in
one iterative pass, resolving plain scalars with the YAML 1.2 *core* schema only. So:

- every mapping and sequence remembers the line/column of its keys, values and items;
- duplicate keys, unsupported tags and non-scalar keys are located errors;
- aliases share data, but a document whose aliases expand beyond a node budget
  (a "billion laughs" bomb) or refer to their own anchor is refused while it is read;
- nesting deeper than a bound is refused (no recursion anywhere, so no stack overflow:
  libyaml's composer would crash the process on ~30k levels, we never call it);
- numbers remember the text the user typed, so a string field given `1.10` or `012`
  gets exactly that text instead of a silently changed value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from _ruamel_yaml import CParser
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64
#: Expanded node budget per document: generous for real manifests, tiny for a bomb.
MAX_EXPANDED_NODES = 100_000

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"

# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#103-core-schema), nothing more:
# no yes/no/on/off, no sexagesimals, no implicit octal, no timestamps, no merge keys.
_CORE: list[tuple[str, re.Pattern[str]]] = [
    (_NULL, re.compile(r"^(?:~|null|Null|NULL|)$")),
    (_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")),
    (_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")),
    (
        _FLOAT,
        re.compile(
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
    ),
]
_FIRST = set("~nNtTfF-+0123456789.")


class Pos(tuple[int, int]):
    """(line, column), both 1-based."""

    __slots__ = ()

    @property
    def line(self) -> int:
        return self[0]

    @property
    def col(self) -> int:
        return self[1]


class YMap(dict[str, Any]):
    """A mapping that remembers where it, its keys and its values are."""

    __slots__ = ("kpos", "pos", "vpos")

    pos: Pos
    kpos: dict[str, Pos]
    vpos: dict[str, Pos]


class YSeq(list[Any]):
    """A sequence that remembers where it and its items are."""

    __slots__ = ("ipos", "pos")

    pos: Pos
    ipos: list[Pos]


class YInt(int):
    """An int that remembers how it was written (`012`, `0x1F`)."""

    text: str


class YFloat(float):
    """A float that remembers how it was written (`1.10`)."""

    text: str


@dataclass(frozen=True)
class YamlProblem(Exception):
    """A located problem in a YAML file (1-based line and column)."""

    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.line}:{self.col}: {self.message}"


@dataclass
class Document:
    """One YAML document of a file: its data (or None when empty) and where it starts."""

    data: Any
    index: int
    pos: Pos


def _resolve_plain(text: str) -> str:
    if text == "" or text[0] in _FIRST:
        for tag, rx in _CORE:
            if rx.match(text):
                return tag
    return _STR


def _mark_pos(mark: Any) -> Pos:
    return Pos((mark.line + 1, mark.column + 1))


def _at(mark: Any, message: str) -> YamlProblem:
    return YamlProblem(mark.line + 1, mark.column + 1, message)


def _scalar(ev: ScalarEvent) -> Any:
    text: str = ev.value
    tag = ev.tag
    if tag is None or tag == "!":
        tag = _resolve_plain(text) if (ev.implicit[0] and tag is None) else _STR
    if tag == _STR:
        return text
    if tag == _NULL:
        if text in ("", "~", "null", "Null", "NULL"):
            return None
        raise _at(ev.start_mark, f"{text!r} is not a valid null")
    if tag == _BOOL:
        if text in ("true", "True", "TRUE"):
            return True
        if text in ("false", "False", "FALSE"):
            return False
        raise _at(ev.start_mark, f"{text!r} is not a valid boolean (use true or false)")
    if tag == _INT:
        try:
            if text.startswith("0o"):
                i = YInt(int(text[2:], 8))
            elif text.startswith("0x"):
                i = YInt(int(text[2:], 16))
            else:
                i = YInt(int(text, 10))
        except ValueError:
            raise _at(ev.start_mark, f"{text!r} is not a valid integer") from None
        i.text = text
        return i
    if tag == _FLOAT:
        t = text.lower()
        try:
            if t.endswith(".inf"):
                f = YFloat("-inf" if t.startswith("-") else "inf")
            elif t == ".nan":
                f = YFloat("nan")
            else:
                f = YFloat(text)
        except ValueError:
            raise _at(ev.start_mark, f"{text!r} is not a valid number") from None
        f.text = text
        return f
    raise _at(ev.start_mark, f"unsupported tag {tag!r} (only core YAML types are allowed)")


class _Frame:
    """An open mapping or sequence while events stream in."""

    __slots__ = ("anchor", "is_map", "key", "key_pos", "obj", "size")

    def __init__(self, obj: YMap | YSeq, is_map: bool, anchor: str | None) -> None:
        self.obj = obj
        self.is_map = is_map
        self.key: str | None = None
        self.key_pos: Pos | None = None
        self.size = 1
        self.anchor = anchor


#: A `%YAML` directive whose version runs straight into `#`: libyaml takes the `#` for
#: a comment, but a comment must follow whitespace (YAML 1.2.2 rule [77] s-b-comment;
#: the test suite's case MUS6/00).
_GLUED_COMMENT = re.compile(r"^%YAML[ \t]+[^ \t#]*#")


def _check_directives(lines: list[str], start: Any, end: Any) -> None:
    """Refuse what libyaml's scanner lets through in a document's directive lines."""
    for number in range(start.line, end.line + 1):
        line = lines[number] if number < len(lines) else ""
        if m := _GLUED_COMMENT.match(line):
            raise YamlProblem(number + 1, m.end(), "a comment needs a space before '#'")


def _events_to_documents(parser: Any, text: str) -> Iterator[Document]:
    """Build documents from C parser events in one iterative pass.

    Aliases share the anchored object (no copy), but count the anchored subtree's
    size against the document's budget, so a bomb is refused while its events are
    still being read, long before anything walks the data.
    """
    index = 0
    stack: list[_Frame] = []
    anchors: dict[str, tuple[Any, int]] = {}
    open_anchors: set[str] = set()
    total = 0
    root: Any = None
    doc_pos = Pos((1, 1))

    def add(value: Any, size: int, pos: Pos, mark: Any) -> None:
        nonlocal root
        if not stack:
            root = value
            return
        fr = stack[-1]
        fr.size += size
        if fr.is_map:
            if fr.key is None:
                if not isinstance(value, str):
                    raise _at(mark, "mapping keys must be plain scalars")
                if value in fr.obj:
                    first = fr.obj.kpos[value]  # type: ignore[union-attr]
                    raise _at(mark, f"duplicate key {value!r} (first defined at line {first.line})")
                fr.key = value
                fr.key_pos = pos
            else:
                m = fr.obj
                assert isinstance(m, YMap) and fr.key_pos is not None
                m[fr.key] = value
                m.kpos[fr.key] = fr.key_pos
                m.vpos[fr.key] = pos
                fr.key = None
        else:
            fr.obj.append(value)  # type: ignore[union-attr]
            fr.obj.ipos.append(pos)  # type: ignore[union-attr]

    while True:
        ev = parser.get_event()
        cls = type(ev)
        if cls is ScalarEvent:
            mark = ev.start_mark
            if stack and stack[-1].is_map and stack[-1].key is None:
                if ev.tag is not None and ev.tag not in ("!", _STR):
                    raise _at(mark, "mapping keys must be plain strings")
                if ev.value == "<<" and ev.style == "" and ev.tag is None:
                    raise _at(mark, "merge keys (<<) are not supported; write the keys out")
                value: Any = ev.value
            else:
                value = _scalar(ev)
            total += 1
            pos = _mark_pos(mark)
            if ev.anchor is not None:
                anchors[ev.anchor] = (value, 1)
            add(value, 1, pos, mark)
        elif cls is MappingStartEvent or cls is SequenceStartEvent:
            mark = ev.start_mark
            if stack and stack[-1].is_map and stack[-1].key is None:
                raise _at(mark, "mapping keys must be plain scalars")
            if len(stack) >= MAX_DEPTH:
                raise _at(mark, f"nesting deeper than {MAX_DEPTH} levels")
            is_map = cls is MappingStartEvent
            want = _MAP if is_map else _SEQ
            if ev.tag is not None and ev.tag not in ("!", want):
                kind = "mapping" if is_map else "sequence"
                raise _at(mark, f"unsupported tag {ev.tag!r} on a {kind}")
            obj: YMap | YSeq
            if is_map:
                obj = YMap()
                obj.kpos = {}
                obj.vpos = {}
            else:
                obj = YSeq()
                obj.ipos = []
            obj.pos = _mark_pos(mark)
            total += 1
            if ev.anchor is not None:
                open_anchors.add(ev.anchor)
            stack.append(_Frame(obj, is_map, ev.anchor))
        elif cls is MappingEndEvent or cls is SequenceEndEvent:
            fr = stack.pop()
            if fr.anchor is not None:
                open_anchors.discard(fr.anchor)
                anchors[fr.anchor] = (fr.obj, fr.size)
            add(fr.obj, fr.size, fr.obj.pos, ev.start_mark)
        elif cls is AliasEvent:
            mark = ev.start_mark
            if ev.anchor in open_anchors:
                raise _at(mark, f"alias *{ev.anchor} refers to its own anchor (recursive)")
            if ev.anchor not in anchors:
                raise _at(mark, f"found undefined alias *{ev.anchor}")
            value, size = anchors[ev.anchor]
            total += size
            if total > MAX_EXPANDED_NODES:
                raise _at(
                    mark,
                    f"aliases expand this document beyond {MAX_EXPANDED_NODES:,} nodes "
                    "(refused: possible alias bomb)",
                )
            add(value, size, _mark_pos(mark), mark)
        elif cls is DocumentStartEvent:
            if ev.version is not None:
                _check_directives(text.split("\n"), ev.start_mark, ev.end_mark)
            anchors = {}
            open_anchors = set()
            total = 0
            root = None
            doc_pos = _mark_pos(ev.start_mark)
        elif cls is DocumentEndEvent:
            yield Document(root, index, root.pos if isinstance(root, (YMap, YSeq)) else doc_pos)
            index += 1
        elif cls is StreamEndEvent:
            return


def _char_at(text: str, line: int, col: int) -> str:
    lines = text.split("\n", line + 1)
    if line < len(lines) and col < len(lines[line]):
        return lines[line][col]
    return ""


def load_documents(data: bytes) -> Iterator[Document]:
    """Parse all documents of a file. Raises YamlProblem for anything wrong."""
    if len(data) > MAX_FILE_BYTES:
        raise YamlProblem(1, 1, f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    if b"\x00" in data:
        raise YamlProblem(1, 1, "binary file (contains NUL bytes), not YAML")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise YamlProblem(line, col, "file is not valid UTF-8") from None
    parser = CParser(text)
    try:
        yield from _events_to_documents(parser, text)
    except YamlProblem:
        raise
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = e.problem or e.context or "invalid YAML"
        if e.context and e.problem:
            msg = f"{e.problem} ({e.context})"
        if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
            msg = "YAML does not allow tabs for indentation, use spaces"
        raise YamlProblem(
            (mark.line + 1) if mark else 1, (mark.column + 1) if mark else 1, msg
        ) from None
    except (YAMLError, RecursionError, ValueError, TypeError, AssertionError) as e:
        raise YamlProblem(1, 1, f"cannot parse YAML: {e}") from None
    finally:
        parser.dispose()
