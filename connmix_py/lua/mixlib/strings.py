"""mix.str_split with Go's strings.Split semantics."""
from __future__ import annotations

from ..memory import value_size
from .values import bad_argument, fail, lua_string


def split(s: bytes, sep: bytes) -> list[bytes]:
    """strings.Split: an empty separator splits after each UTF-8 sequence
    (an invalid byte is a piece of its own); "" splits to [""]."""
    if sep:
        return s.split(sep)
    text = s.decode("utf-8", "surrogateescape")
    return [ch.encode("utf-8", "surrogateescape") for ch in text]


def bridge(vm) -> dict:
    table_from = vm.runtime.table_from

    def str_split(s=None, sep=None, *_):  # extra Lua arguments are ignored
        data, separator = lua_string(s), lua_string(sep)
        if data is None:
            return bad_argument(1, "str_split", "string", s)
        if separator is None:
            return bad_argument(2, "str_split", "string", sep)
        parts = split(data, separator)
        refusal = vm.memory.refusal(value_size(parts), "str_split")
        if refusal:
            return fail(refusal)
        return table_from(parts), None

    return {"str_split": str_split}
