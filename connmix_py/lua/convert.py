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
MAX_VALUES = 1_000_000
# Lua numbers are doubles; lupa refuses Python ints outside int64, so larger
# ones (e.g. a huge integer in JSON) go over as the nearest double.
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1
lua_type = lupa_rt.lua_type


class ConversionError(ValueError):
    pass


def make_to_lua(table_from: Callable[..., Any]) -> Callable[[Any], Any]:
    """A converter Python -> Lua for one runtime: str -> bytes, dict/list -> table.

    Strings, numbers and None inside a container are handled inline, without
    a call per value: json_decode and on_handshake's tables are all leaves."""

    def leaf_or_table(value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            return value.encode()
        if kind is dict or kind is list or kind is tuple:
            return to_lua(value, depth)
        if kind is int and not _INT64_MIN <= value <= _INT64_MAX:
            return float(value)
        return value

    def to_lua(value: Any, depth: int = 0) -> Any:
        kind = type(value)
        if kind is str:
            return value.encode()
        if kind is dict:
            if depth > MAX_DEPTH:
                raise ConversionError("value nested too deeply")
            depth += 1
            table = {}
            for k, v in value.items():
                if v is None:  # a table cannot hold nil: the key is absent
                    continue
                table[k.encode() if type(k) is str else k] = v.encode() if type(v) is str else leaf_or_table(v, depth)
            return table_from(table)
        if kind is list or kind is tuple:
            if depth > MAX_DEPTH:
                raise ConversionError("value nested too deeply")
            depth += 1
            return table_from([v.encode() if type(v) is str else leaf_or_table(v, depth) for v in value])
        if kind is int and not _INT64_MIN <= value <= _INT64_MAX:
            return float(value)
        return value

    return to_lua


def make_to_lua_pairs(to_lua: Callable[..., Any]) -> Callable[[dict], tuple]:
    """A dict as ``(n, k1, v1, ... kn, vn)`` for Lua to build the table from
    (prelude.lua's json_decoded): no table is made in Python and handed over,
    which costs more than the table itself for the small objects clients
    send. Keys are str (a JSON object's); values but strings go through
    ``to_lua`` (nested ones one level down). Grown as a tuple, no list:
    measured cheaper for 2 and 5 keys (the objects have at most
    json.PAIRS_MAX_KEYS, so the copies stay small)."""

    def to_lua_pairs(value: dict) -> tuple:
        if len(value) == 2:  # the usual client message, {"op": ..., "data": ...}: one tuple, no loop
            (k1, v1), (k2, v2) = value.items()
            if type(v1) is str and type(v2) is str:
                return 2, k1.encode(), v1.encode(), k2.encode(), v2.encode()
        out: tuple = ()
        for k, v in value.items():
            if type(v) is str:
                out += (k.encode(), v.encode())
            elif v is not None:  # a table cannot hold nil: the key is absent
                out += (k.encode(), to_lua(v, 1))
        return (len(out) >> 1, *out)

    return to_lua_pairs


def from_lua(value: Any) -> Any:
    """Lua -> Python: a table with keys 1..n -> list, other tables -> dict
    with str keys, an empty table -> {}; strings stay bytes.

    Raises ConversionError for functions, threads, userdata, tables nested
    over MAX_DEPTH (which catches cycles) and more than MAX_VALUES values in
    all (which catches a table shared many times over: {t, t} nested 40
    deep would otherwise keep the process busy for days)."""
    kind = lua_type(value)
    if kind == "table":
        return _table(value, 0, [MAX_VALUES])
    if kind is not None:
        raise ConversionError(f"cannot convert a Lua {kind}")
    return value


def _value(value: Any, depth: int, budget: list[int]) -> Any:
    kind = lua_type(value)
    if kind is None:
        return value
    if kind == "table":
        return _table(value, depth, budget)
    raise ConversionError(f"cannot convert a Lua {kind}")


def _table(table: Any, depth: int, budget: list[int]) -> Any:
    if depth > MAX_DEPTH:
        raise ConversionError("table nested too deeply (or cyclic)")
    items = list(table.items())
    if not items:
        return {}
    budget[0] -= len(items)
    if budget[0] < 0:
        raise ConversionError(f"table too large (over {MAX_VALUES} values in all)")
    depth += 1
    n = len(items)
    if all(type(k) is int and 1 <= k <= n for k, _ in items):
        array: list[Any] = [None] * n
        for k, v in items:
            array[k - 1] = _value(v, depth, budget)
        return array
    obj: dict[str, Any] = {}
    for k, v in items:
        obj[_key(k)] = _value(v, depth, budget)
    return obj


def _key(key: Any) -> str:
    """A table key as an object key, the way Lua's tostring writes it."""
    kind = type(key)
    if kind is bytes:
        return key.decode("utf-8", "replace")
    if kind is bool:
        return "true" if key else "false"
    if kind is int:
        return str(key)
    if kind is float:
        return "%.14g" % key
    raise ConversionError(f"cannot use a Lua {lua_type(key) or kind.__name__} as a key")
