"""Values across the Lua boundary.

The runtime runs with ``encoding=None``: every Lua string arrives in Python
as bytes, and every string handed to Lua must be bytes (a Python str would
arrive as an opaque userdata). These two functions are the only place that
knows it.
"""
from __future__ import annotations

from typing import Any, Callable

from lupa import luajit21 as lupa_rt

MAX_DEPTH = 64
lua_type = lupa_rt.lua_type


class ConversionError(ValueError):
    pass


def make_to_lua(table_from: Callable[..., Any]) -> Callable[[Any], Any]:
    """A converter Python -> Lua for one runtime: str -> bytes, dict/list -> table."""

    def to_lua(value: Any, depth: int = 0) -> Any:
        kind = type(value)
        if kind is str:
            return value.encode()
        if kind is dict:
            if depth > MAX_DEPTH:
                raise ConversionError("value nested too deeply")
            return table_from({(k.encode() if type(k) is str else k): to_lua(v, depth + 1)
                               for k, v in value.items() if v is not None})
        if kind is list or kind is tuple:
            if depth > MAX_DEPTH:
                raise ConversionError("value nested too deeply")
            return table_from([to_lua(v, depth + 1) for v in value])
        return value

    return to_lua


def from_lua(value: Any, depth: int = 0) -> Any:
    """Lua -> Python: a table with keys 1..n -> list, other tables -> dict
    with str keys, an empty table -> {}; strings stay bytes."""
    if lua_type(value) != "table":
        if lua_type(value) in ("function", "userdata", "thread"):
            raise ConversionError(f"cannot convert a Lua {lua_type(value)}")
        return value
    if depth > MAX_DEPTH:
        raise ConversionError("table nested too deeply (or cyclic)")
    items = list(value.items())
    if not items:
        return {}
    n = len(items)
    if all(type(k) is int and 1 <= k <= n for k, _ in items):
        array: list[Any] = [None] * n
        for k, v in items:
            array[k - 1] = from_lua(v, depth + 1)
        return array
    obj: dict[str, Any] = {}
    for k, v in items:
        if type(k) is bytes:
            key = k.decode("utf-8", "replace")
        elif type(k) in (int, float, bool):
            key = str(k).lower() if type(k) is bool else ("%.14g" % k if type(k) is float else str(k))
        else:
            raise ConversionError(f"cannot use a Lua {lua_type(k) or type(k).__name__} as a key")
        obj[key] = from_lua(v, depth + 1)
    return obj
