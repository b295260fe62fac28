"""Files and text from someone else, read under one rule.

A model folder is input from someone else (downloaded from a hub, handed over by a colleague): every JSON file in
it is read like a data file. `read_json` reads one with a size limit, refuses what Python's parser would choke on or
misread (nesting thousands of levels deep, NaN and Infinity, numbers beyond what any count or score can be) and
checks its shape against a declaration (`Obj`, `Num`, `Int`, `Str`, `Opt`, `Map`, `Any`), so that a reader gets either
the typed values it expects or one `UserError` naming the file and the key:

    SHAPE = Obj(version=Int(1, 99), decoding=Opt(Obj(max_new_tokens=Opt(Int(1, 10**6)))))
    d = read_json(path, SHAPE, "metrics.json")          # or check_shape(obj, SHAPE, where)

Text at the edges has one rule too (`clean_text`): a lone surrogate (what a broken UTF-16 conversion or a JSON
`"\\ud800"` leaves) cannot be encoded, so tokenizers and files refuse it; it becomes U+FFFD, and a NUL character
(which tokenizers and C libraries read as an end) becomes a space; the caller says how many were replaced.
A path with a NUL byte cannot name a file: `check_path` refuses it, naming the setting.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any as AnyType
from typing import Optional

from .errors import UserError

MAX_JSON_BYTES = 64 * 2**20  # a model folder's JSON files are kilobytes; a larger one is not what we wrote
MAX_DEPTH = 64  # ours nest 5 levels at most
MAX_NUMBER = 1e18  # no count, size, seconds or score we write comes near it


class Shape:
    what = "a value"

    def check(self, v, where: str) -> None:  # raises _Bad
        raise NotImplementedError


class _Bad(Exception):
    def __init__(self, where: str, value, wanted: str):
        super().__init__(where)
        self.where, self.value, self.wanted = where, value, wanted


def _shown(v) -> str:
    text = json.dumps(v, ensure_ascii=True, default=str) if not isinstance(v, float) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class Any(Shape):
    what: str = "any JSON value"

    def check(self, v, where):
        pass


@dataclass
class Num(Shape):
    lo: float = -MAX_NUMBER
    hi: float = MAX_NUMBER
    what: str = "a number"

    def check(self, v, where):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (self.lo <= v <= self.hi):
            raise _Bad(where, v, f"a number from {self.lo:g} to {self.hi:g}")


@dataclass
class Int(Shape):
    lo: int = 0
    hi: int = 10**15
    what: str = "a whole number"

    def check(self, v, where):
        if isinstance(v, bool) or not isinstance(v, int) or not (self.lo <= v <= self.hi):
            raise _Bad(where, v, f"a whole number from {self.lo} to {self.hi}")


@dataclass
class Str(Shape):
    max_len: int = 100_000
    what: str = "a string"

    def check(self, v, where):
        if not isinstance(v, str) or len(v) > self.max_len:
            raise _Bad(where, v, "a string" + (f" of at most {self.max_len} characters" if isinstance(v, str) else ""))


@dataclass
class Bool(Shape):
    what: str = "true or false"

    def check(self, v, where):
        if not isinstance(v, bool):
            raise _Bad(where, v, "true or false")


@dataclass
class Opt(Shape):
    inner: Shape = field(default_factory=Any)

    def check(self, v, where):
        if v is not None:
            self.inner.check(v, where)


@dataclass
class Lst(Shape):
    item: Shape = field(default_factory=Any)
    max_len: int = 100_000

    def check(self, v, where):
        if not isinstance(v, list) or len(v) > self.max_len:
            raise _Bad(where, v, "a list")
        for i, x in enumerate(v):
            self.item.check(x, f"{where}[{i}]")


@dataclass
class Map(Shape):
    """A JSON object whose keys are free and whose values all have one shape."""

    value: Shape = field(default_factory=Any)

    def check(self, v, where):
        if not isinstance(v, dict):
            raise _Bad(where, v, "a JSON object")
        for k, x in v.items():
            self.value.check(x, f"{where}.{k}" if where else k)


class Obj(Shape):
    """A JSON object with these keys (each optional unless its shape says otherwise: Opt is implied for absence);
    other keys are allowed and checked only by the generic rules."""

    def __init__(self, **keys: Shape):
        self.keys, self.required = keys, set()

    def require(self, *names: str) -> "Obj":
        self.required |= set(names)
        return self

    def check(self, v, where):
        if not isinstance(v, dict):
            raise _Bad(where, v, "a JSON object")
        for name in sorted(self.required - set(v)):
            raise _Bad(f"{where}.{name}" if where else name, None, "present")
        for name, shape in self.keys.items():
            if name in v:
                shape.check(v[name], f"{where}.{name}" if where else name)


def _walk(v, where: str, depth: int) -> None:
    """The rules for every value of an untrusted file: bounded depth, finite and bounded numbers."""
    if depth > MAX_DEPTH:
        raise _Bad(where, "...", f"at most {MAX_DEPTH} levels of nesting")
    if isinstance(v, float) and not (math.isfinite(v) and abs(v) <= MAX_NUMBER):
        raise _Bad(where, v, "a finite number")
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_NUMBER:
        raise _Bad(where, v, f"a number of at most {MAX_NUMBER:g}")
    if isinstance(v, dict):
        for k, x in v.items():
            _walk(x, f"{where}.{k}" if where else str(k), depth + 1)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _walk(x, f"{where}[{i}]", depth + 1)


def check_shape(obj, shape: Shape, what: str) -> AnyType:
    """`obj` when it has `shape` (and the generic rules hold), else one UserError naming `what` and the key."""
    try:
        _walk(obj, "", 0)
        shape.check(obj, "")
    except _Bad as e:
        key = f"key {e.where}" if e.where else "its content"
        got = "missing" if e.wanted == "present" else f"is {_shown(e.value)}"
        raise UserError(f"{what}: {key} {got}; expected {e.wanted}") from None
    except RecursionError:
        raise UserError(f"{what}: nested too deeply to read") from None
    return obj


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def loads(text: str, what: str):
    """json.loads for untrusted text: NaN/Infinity refused, nesting too deep for the parser a UserError."""
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise UserError(f"{what}: JSON nested too deeply to read (thousands of levels)") from None
    except ValueError as e:
        raise UserError(f"{what}: not valid JSON ({str(e).splitlines()[0][:200]})") from None


def read_json(path: Path, shape: Shape, what: Optional[str] = None) -> AnyType:
    """An untrusted JSON file, read and checked: its content, or one UserError naming the file and the key."""
    what = what or str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise UserError(f"{what}: cannot read it ({e.strerror or type(e).__name__})") from None
    if len(raw) > MAX_JSON_BYTES:
        raise UserError(f"{what}: larger than {MAX_JSON_BYTES // 2**20} MiB; not a file this project writes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what}: not UTF-8 (byte offset {e.start})") from None
    if not text.strip():
        raise UserError(f"{what}: empty (was it cut off?)")
    return check_shape(loads(text, what), shape, what)


# ---------------------------------------------------------------------------------------------
# Text and paths

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> tuple[str, int]:
    """(text, how many characters were replaced): lone surrogates become U+FFFD, NUL a space."""
    n = 0
    if "\x00" in text:
        n += text.count("\x00")
        text = text.replace("\x00", " ")
    fixed, m = _SURROGATE.subn("\ufffd", text)
    return fixed, n + m


def check_path(value, key: str) -> None:
    """A path setting that cannot name a file (a NUL byte in it) refused, naming the setting."""
    if value is not None and "\x00" in str(value):
        raise UserError(f"{key}: {str(value)!r} holds a NUL character, which no file name can; give a plain path")
