"""mix.json_encode / mix.json_decode."""
from __future__ import annotations

from typing import Any

import orjson

from ..convert import ConversionError, from_lua
from .values import bad_argument, fail, lua_string


def _bytes_as_text(value: Any) -> str:
    if type(value) is bytes:
        return value.decode("utf-8", "replace")
    raise TypeError(f"cannot encode {type(value).__name__}")


def bridge(vm) -> dict:
    to_lua = vm.to_lua

    def json_encode(value=None):
        try:
            return orjson.dumps(from_lua(value), default=_bytes_as_text,
                                option=orjson.OPT_SORT_KEYS), None
        except (ConversionError, TypeError, orjson.JSONEncodeError) as exc:
            return fail(f"json_encode: {exc}")

    def json_decode(text=None):
        data = lua_string(text)
        if data is None:
            return bad_argument(1, "json_decode", "string", text)
        try:
            return to_lua(orjson.loads(data)), None
        except orjson.JSONDecodeError as exc:
            return fail(f"json_decode: {exc}")
        except ConversionError as exc:
            return fail(f"json_decode: {exc}")

    return {"json_encode": json_encode, "json_decode": json_decode}
