"""Located manifest errors (`path:line:col: message`) and how pydantic errors become them."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from reconciler.errors import ReconcilerError
from reconciler.manifests import models as m
from reconciler.manifests.yamlload import Pos, YFloat, YInt, YMap, YSeq

#: Names that say "this holds a credential" (env vars, config keys).
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|AUTH)", re.I)
#: Values shaped like well-known API keys and tokens.
SECRET_VALUE = re.compile(
    r"^(sk-[A-Za-z0-9_-]{16,}|sk-ant-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|hf_[A-Za-z0-9]{20,}|r8_[A-Za-z0-9]{20,}"
    r"|xox[abpors]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|glpat-[A-Za-z0-9_-]{16,}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})"
)
_URL_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*)://([^/?#@\s]*)@", re.I)
#: Where a key naming a credential makes the value below it sensitive.
_VALUE_HOLDERS = frozenset({"env", "config", "input"})
HIDDEN = "(not shown: it may be a credential)"


def has_userinfo(text: str) -> bool:
    """A URL carrying credentials: any `user:password@`, or any user at all in an
    http(s) URL (a token is often passed as the user name)."""
    for found in _URL_USERINFO.finditer(text):
        if ":" in found.group(2) or found.group(1).lower() in ("http", "https"):
            return True
    return False


def looks_secret(text: str) -> bool:
    return bool(SECRET_VALUE.match(text)) or has_userinfo(text)


def sensitive(loc: Sequence[str | int], value: Any) -> bool:
    """Whether a problem's value must not be echoed: anything under `credentials`,
    under an env/config/input key that names a credential, or shaped like a secret."""
    parts = [p for p in loc if isinstance(p, str)]
    if "credentials" in parts:
        return True
    for i, part in enumerate(parts):
        if part in _VALUE_HOLDERS and any(SECRET_NAME.search(p) for p in parts[i + 1 :]):
            return True
    text = getattr(value, "text", value)
    return isinstance(text, str) and looks_secret(text)


@dataclass(frozen=True, order=True)
class Diagnostic:
    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.message}"


class ManifestError(ReconcilerError):
    """The manifests are invalid; every problem found is in `diagnostics`, sorted."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = sorted(set(diagnostics), key=_sort_key)
        n = len(self.diagnostics)
        super().__init__(
            f"{n} error{'s' if n != 1 else ''} in the manifests",
            details="\n".join(str(d) for d in self.diagnostics),
        )


def _sort_key(d: Diagnostic) -> tuple[str, int, int, str]:
    return (d.path, d.line, d.col, d.message)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def locate(data: Any, loc: Sequence[str | int], *, key: bool = False) -> Pos:
    """The position of `loc` inside a loaded document, or of its deepest existing parent."""
    node = data
    pos = getattr(data, "pos", Pos((1, 1)))
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, YMap) and isinstance(part, str) and part in node:
            pos = node.kpos[part] if (last and key) else node.vpos[part]
            node = node[part]
        elif isinstance(node, YSeq) and isinstance(part, int) and 0 <= part < len(node):
            pos = node.ipos[part]
            node = node[part]
        else:
            break
    return pos


def _describe(value: Any, hide: bool = False) -> str:
    if hide and not isinstance(value, dict | list) and value is not None:
        kind = (
            "a boolean"
            if isinstance(value, bool)
            else "text"
            if isinstance(value, str)
            else "a number"
        )
        return f"{kind} {HIDDEN}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, YInt | YFloat):
        return f"the number {value.text}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


_PATTERN_HINTS = {
    m.SLUG_PATTERN: "lowercase letters, digits, '-' and '_', starting and ending with a letter "
    "or digit, at most 63 characters",
    m.ENV_VAR_PATTERN: "an environment variable name (letters, digits and '_', not starting "
    "with a digit)",
    m.SEMVER_PATTERN: "a semantic version such as 1.2.0",
    m.ENDPOINT_PATTERN: "a path: '/' then lowercase letters, digits, '-', '_' and '/'",
    m.PROMPT_REF_PATTERN: "a prompt reference `name@version`, e.g. support@1.1.0",
    m.INTERVAL_PATTERN: "a number and a unit s, m, h or d, e.g. 90s, 30m, 6h, 1d",
}
_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n", "Yes", "No", "On", "Off", "YES", "NO"}


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class whose fields `loc` names (for 'did you mean' on unknown fields)."""
    import typing

    current: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next(
                (f for n, f in current.model_fields.items() if (f.alias or n) == part), None
            )
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        # unwrap Optional / list / Annotated until a model or dict appears
        for _ in range(6):
            origin = typing.get_origin(current)
            if origin is typing.Annotated:
                current = typing.get_args(current)[0]
            elif origin in (list, typing.Union) or str(origin) == "<class 'types.UnionType'>":
                args = [a for a in typing.get_args(current) if a is not type(None)]
                if len(args) != 1:
                    break
                current = args[0]
            else:
                break
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _fields_of(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def from_validation_error(
    err: ValidationError,
    data: Any,
    path: str,
    *,
    root: type[BaseModel] | None = None,
    prefix: Sequence[str | int] = (),
    overlay: Any = None,
    overlay_prefix: Sequence[str | int] = (),
) -> list[Diagnostic]:
    """Turn pydantic errors into located diagnostics.

    `prefix` is where the validated object sits inside `data` (e.g. a spec inside its
    document). With `overlay`, a location that exists in the overlay (an environment
    override) is reported there instead.
    """
    out: list[Diagnostic] = []
    seen: set[tuple[Any, ...]] = set()
    for e in err.errors(include_url=False):
        loc: list[str | int] = [p for p in e["loc"] if p not in m.UNION_TAGS]
        if loc and isinstance(data, YMap) and loc[0] in m.KINDS and loc[0] not in data:
            model_root: type[BaseModel] | None = m.KINDS[str(loc[0])]
            loc = loc[1:]
        else:
            model_root = root
        etype = e["type"]
        is_key = etype == "extra_forbidden"
        if etype == "union_tag_invalid":
            loc = ["kind"]
        full = [*prefix, *loc]
        target, where = data, full
        if overlay is not None:
            ov_loc = [*overlay_prefix, *loc]
            if _exists(overlay, ov_loc[:-1] if etype == "missing" else ov_loc):
                target, where = overlay, ov_loc
        pos = locate(target, where, key=is_key)
        dotted = ".".join(str(p) for p in full) if etype != "union_tag_invalid" else ""
        message = _message(e, loc, model_root, dotted, hide=sensitive(full, e.get("input")))
        sig = (pos, message)
        if sig in seen:
            continue
        seen.add(sig)
        out.append(Diagnostic(path, pos.line, pos.col, message))
    return out


def _exists(data: Any, loc: Sequence[str | int]) -> bool:
    node = data
    for part in loc:
        in_map = isinstance(node, dict) and part in node
        in_seq = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_map or in_seq:
            node = node[part]
        else:
            return False
    return True


def _message(
    e: Any, loc: list[str | int], root: type[BaseModel] | None, dotted: str, *, hide: bool = False
) -> str:
    """The message for one pydantic error; with `hide`, the value is never quoted."""
    etype: str = e["type"]
    value = e.get("input")
    ctx = e.get("ctx") or {}
    name = str(loc[-1]) if loc else ""
    if etype == "extra_forbidden":
        hint = ""
        if root is not None:
            parent = _model_at(root, loc[:-1])
            if parent is not None:
                hint = did_you_mean(name, _fields_of(parent))
        return f"unknown field {name!r}{hint}"
    if etype == "missing":
        return f"{dotted}: required field is missing"
    if etype == "string_type":
        return f"{dotted}: expected text, got {_describe(value, hide)}"
    if etype in ("bool_type", "bool_parsing"):
        extra = ""
        if isinstance(value, str) and value in _YAML11_BOOLS:
            extra = " (YAML 1.2 reads yes/no/on/off as text: write true or false)"
        return f"{dotted}: expected true or false, got {_describe(value, hide)}{extra}"
    if etype in ("int_type", "int_from_float", "int_parsing"):
        return f"{dotted}: expected a whole number, got {_describe(value, hide)}"
    if etype in ("float_type", "float_parsing"):
        return f"{dotted}: expected a number, got {_describe(value, hide)}"
    if etype in ("dict_type", "model_type", "model_attributes_type"):
        return f"{dotted}: expected a mapping, got {_describe(value, hide)}"
    if etype == "list_type":
        return f"{dotted}: expected a list, got {_describe(value, hide)}"
    if etype == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(str(ctx.get("pattern")), f"must match {ctx.get('pattern')}")
        shown = f"the value {HIDDEN}" if hide else repr(value)
        return f"{dotted}: {shown} is not valid: {hint}"
    if etype == "literal_error":
        expected = str(ctx.get("expected", ""))
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",")]
        hint = did_you_mean(str(value), choices) if isinstance(value, str) and not hide else ""
        return f"{dotted}: {_describe(value, hide)} is not one of {expected}{hint}"
    if etype in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        op = {
            "greater_than_equal": ">=",
            "less_than_equal": "<=",
            "greater_than": ">",
            "less_than": "<",
        }[etype]
        bound = next(iter(ctx.values()), "?")
        return f"{dotted}: must be {op} {bound}, got {_describe(value, hide)}"
    if etype == "too_short":
        return f"{dotted}: must not be empty"
    if etype == "union_tag_invalid":
        tag = ctx.get("tag")
        return f"unknown kind {tag!r}{did_you_mean(str(tag), m.KINDS)}; expected one of " + (
            ", ".join(m.KINDS)
        )
    if etype == "union_tag_not_found":
        return "missing `kind` (one of " + ", ".join(m.KINDS) + ")"
    if etype == "value_error":
        return f"{dotted}: {str(e['msg']).removeprefix('Value error, ')}"
    msg = str(e["msg"])
    return f"{dotted}: {msg}" if dotted else msg
