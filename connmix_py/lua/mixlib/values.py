"""Small helpers shared by the mix bridge functions."""
from __future__ import annotations

from typing import Any


def err(message: str) -> bytes:
    """An error value for Lua (a Lua string)."""
    return message.encode()


def fail(message: str) -> tuple[None, bytes]:
    """The `nil, err` pair."""
    return None, message.encode()


def lua_string(value: Any) -> bytes | None:
    """A Lua string argument as bytes; numbers convert like Lua's tostring."""
    kind = type(value)
    if kind is bytes:
        return value
    if kind is int:
        return str(value).encode()
    if kind is float:
        return (b"%.14g" % value)
    return None


def lua_text(value: Any) -> str:
    """Any Lua value as text, the way Lua's tostring shows it."""
    if value is None:
        return "nil"
    if value is True or value is False:
        return "true" if value else "false"
    text = lua_string(value)
    if text is not None:
        return text.decode("utf-8", "replace")
    return str(value)


def type_name(value: Any) -> str:
    from ..convert import lua_type
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, bytes):
        return "string"
    return lua_type(value) or type(value).__name__


def bad_argument(n: int, fname: str, expected: str, got: Any) -> tuple[None, bytes]:
    return fail(f"bad argument #{n} to '{fname}' ({expected} expected, got {type_name(got)})")
