"""mix.json_encode / mix.json_decode.

Output is Go-like: object keys sorted, invalid UTF-8 replaced by U+FFFD,
NaN and infinities refused (Go's encoding/json errors on them; orjson
would quietly write null).
"""
from __future__ import annotations

import math
from typing import Any

import orjson

from ..convert import ConversionError, from_lua, make_to_lua_pairs
from ..memory import HEADROOM
from .values import bad_argument, fail, lua_string


def _bytes_as_text(value: Any) -> str:
    if type(value) is bytes:
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot encode {type(value).__name__}")


def _has_non_finite(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return not math.isfinite(value)
    if kind is dict:
        return any(_has_non_finite(v) for v in value.values())
    if kind is list:
        return any(_has_non_finite(v) for v in value)
    return False


# What one decoded value costs at most, in Lua (a table) and in Python first.
VALUE_COST = 64


def decoded_size(data: bytes) -> int:
    """An upper bound of the memory json_decode(data) takes: every value is
    at most a table, and there are no more values than separators."""
    values = data.count(b",") + data.count(b":") + data.count(b"[") + data.count(b"{") + 1
    return len(data) + values * VALUE_COST


# Text this short decodes to less than half the headroom the bridge's memory
# guard keeps free (memory.py): no need to count its values.
SHORT_TEXT = (HEADROOM // 2 - VALUE_COST) // (VALUE_COST + 1)


# Objects with at most this many keys are built in Lua from their keys and
# values (convert.make_to_lua_pairs); select() makes larger ones cost n^2.
PAIRS_MAX_KEYS = 16


def bridge(vm) -> dict:
    # decoded_size bounds what the table takes, checked first: no second walk.
    to_lua = vm.to_lua_unchecked
    to_lua_pairs = make_to_lua_pairs(to_lua)

    # Lua passes as many arguments as the caller wrote (json_encode(f()) is
    # common): extras are ignored.
    def json_encode(value=None, *_):
        try:
            python = from_lua(value)
            text = orjson.dumps(python, default=_bytes_as_text, option=orjson.OPT_SORT_KEYS)
        except (ConversionError, TypeError, orjson.JSONEncodeError) as exc:
            return fail(f"json_encode: {exc}")
        # A table cannot hold nil, so "null" inside the output can only come
        # from NaN/inf (or text that spells null): check only then.
        if python is not None and b"null" in text and _has_non_finite(python):
            return fail("json_encode: unsupported number (NaN or infinity)")
        return text, None

    # Not wrapped in memory.guard (vm.UNGUARDED): its checks are here, the
    # guard's first and then the size bound of what it builds. The usual
    # answers (a string argument, memory far from full) cost no call.
    memory = vm.memory
    memory_used, near_full, used_up = memory.runtime.get_memory_used, memory.cap - HEADROOM, memory.used_up
    loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError

    def json_decode(text=None, *_):
        data = text if type(text) is bytes else lua_string(text)
        if data is None:
            return bad_argument(1, "json_decode", "string", text)
        if memory_used() > near_full and used_up():
            return fail("json_decode: the Lua memory budget is used up")
        if len(data) >= SHORT_TEXT:
            refusal = memory.refusal(decoded_size(data), "json_decode")
            if refusal:
                return fail(refusal)
        try:
            value = loads(data)
            if type(value) is dict and len(value) <= PAIRS_MAX_KEYS:
                return to_lua_pairs(value)
            return to_lua(value), None
        except (JSONDecodeError, ConversionError) as exc:
            return fail(f"json_decode: {exc}")

    return {"json_encode": json_encode, "json_decode": json_decode}
