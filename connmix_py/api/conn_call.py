"""conn.call: a backend changes one client's subscriptions or context.

``{"c": client_id, "f": function, "a": [arguments]}`` runs the connection
method of that name as if the client's script had called it (through the
Mesh, which finds the client wherever it is); a
``wait_context_value`` waiting in that client's script wakes up. Bad
params are 101; an unknown or closed client is 301.
"""
from __future__ import annotations

from typing import Any, Callable

from ..lua.convert import MAX_DEPTH
from . import schema
from .requests import CALL_FAILED, ApiError, checked, client_id, invalid


async def conn_call(mesh, params: Any) -> dict[str, bool]:
    values = checked(schema.CONN_CALL, params)
    target, name = client_id(values["c"]), values["f"]
    if not await mesh.call(target, name, PREPARE[name](values["a"])):
        raise ApiError(CALL_FAILED, f"execution failed: client {target} not found or closed")
    return {"s": True}


# -- validating the arguments (101 on any mistake) ---------------------------------


def _channels(args: list) -> list[str]:
    if not args:
        raise invalid("a must list at least one channel")
    for i, channel in enumerate(args):
        if not isinstance(channel, str) or not channel or " " in channel:
            raise invalid(f"a[{i}] must be a channel: a non-empty string without spaces")
    return args


def _context(args: list) -> dict:
    if len(args) != 1 or not isinstance(args[0], dict):
        raise invalid("a must be [object]: the new context")
    return _stored(args[0], 0)


def _context_value(args: list) -> tuple[str, Any]:
    if len(args) != 2 or not isinstance(args[0], str) or not args[0]:
        raise invalid("a must be [key, value] with a non-empty string key")
    return args[0], _stored(args[1], 0)


def _stored(value: Any, depth: int) -> Any:
    """A JSON value as the context keeps it: strings as bytes, like the
    values a script stores; nested no deeper than a script can read back."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (dict, list)):
        if depth >= MAX_DEPTH:
            raise invalid(f"a: value nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            return {k: _stored(v, depth + 1) for k, v in value.items()}
        return [_stored(v, depth + 1) for v in value]
    return value


# Each function's argument check; Mesh.call applies it (mesh.CALLS).
PREPARE: dict[str, Callable[[list], Any]] = {
    "subscribe": _channels,
    "unsubscribe": _channels,
    "set_context": _context,
    "set_context_value": _context_value,
}
assert list(PREPARE) == schema.CALL_FUNCTION["enum"], "schema.CALL_FUNCTION lists conn.call's functions"
