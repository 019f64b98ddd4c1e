"""Check plain data against a msgspec schema field by field, gathering every problem instead of the first.

msgspec stops at the first error in a document, so an operator with three
typos would fix them one apply at a time. This walks the schema instead:
each struct's keys (every unknown one is reported), each list item, each
mapping entry, and hands only the leaves (a port, a name, an address) to
msgspec, whose messages are good. Alongside the problems it builds a
repaired copy of the data, with the offending fields left out, so that the
meaning checks (references, clashing addresses) can still run and report
their problems in the same pass. When a problem cannot be left out (a
required field is wrong, a list item is not an object) the copy is marked
lossy: list positions or names would no longer match the file, so the caller
skips the meaning checks rather than report problems that are not there.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import msgspec

_AT = re.compile(r"^(.*?)(?: - at `\$\.?(.*)`)?$", re.S)
_DROP = object()  # a field whose value is wrong: left out of the repaired copy


@dataclass
class Collected:
    """Every schema problem as (field path, message), and the data with the wrong fields left out."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    lossy: bool = False
    value: Any = None


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _strip_optional(typ: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (typ, False)."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(typ)) == 2:
            return args[0], True
    return typ, False


def _is_struct(typ: Any) -> bool:
    return isinstance(typ, type) and issubclass(typ, msgspec.Struct)


class _Walker:
    def __init__(self) -> None:
        self.out = Collected()

    def problem(self, path: str, message: str) -> None:
        self.out.problems.append((path, message))

    def leaf(self, value: Any, typ: Any, path: str) -> Any:
        try:
            return msgspec.convert(value, typ, strict=True)
        except msgspec.ValidationError as e:
            m = _AT.match(str(e))
            assert m is not None
            inner = m.group(2) or ""
            self.problem(f"{path}.{inner}" if path and inner and not inner.startswith("[") else path + inner,
                         m.group(1))
            return _DROP

    def walk(self, value: Any, typ: Any, path: str) -> Any:
        inner, optional = _strip_optional(typ)
        if value is None and optional:
            return None
        origin = typing.get_origin(inner)
        if _is_struct(inner) and isinstance(value, dict):
            return self.struct(value, inner, path)
        if origin is list and isinstance(value, list):
            (item_t,) = typing.get_args(inner)
            items = []
            for i, v in enumerate(value):
                got = self.walk(v, item_t, _join(path, i))
                if got is _DROP:
                    self.out.lossy = True  # positions after it would not match the file
                else:
                    items.append(got)
            return items
        if origin is dict and isinstance(value, dict):
            key_t, val_t = typing.get_args(inner)
            entries = {}
            for k, v in value.items():
                kp = _join(path, str(k))
                if self.leaf(k, key_t, kp) is _DROP:
                    continue
                got = self.walk(v, val_t, kp)
                if got is not _DROP:
                    entries[k] = got
            return entries
        return self.leaf(value, typ, path)

    def struct(self, value: dict[Any, Any], typ: type[msgspec.Struct], path: str) -> Any:
        fields = {f.encode_name: f for f in msgspec.structs.fields(typ)}
        repaired: dict[str, Any] = {}
        whole = True
        for k, v in value.items():
            f = fields.get(k) if isinstance(k, str) else None
            if f is None:
                self.problem(_join(path, str(k)), f"Object contains unknown field `{k}`")
                continue
            got = self.walk(v, f.type, _join(path, k))
            if got is not _DROP:
                repaired[k] = got
            elif f.required:
                whole = False
        for name, f in fields.items():
            if f.required and name not in value:
                self.problem(_join(path, name), f"Object missing required field `{name}`")
                whole = False
        return repaired if whole else _DROP


def collect(data: Any, typ: type[msgspec.Struct]) -> Collected:
    """Every schema problem in `data` as `typ`, with field paths like `services[1].health.timout_ms`."""
    w = _Walker()
    got = w.walk(data, typ, "")
    if got is _DROP:
        w.out.lossy = True
        got = None
    w.out.value = got
    return w.out
