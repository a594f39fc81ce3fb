"""The connection object's methods (conn:send, conn:subscribe, ...).

Lua holds only the client id; every call looks the connection up, so no
reference cycle ties a closed connection to the Lua state. Lua passes as
many arguments as the caller wrote, so every method ignores extras.
"""
from __future__ import annotations

from ...conn import CLOSE_NORMAL, PayloadError
from ..convert import ConversionError, from_lua
from .mesh import frame_kind
from .values import bad_argument, err, fail, lua_string

CLOSED = b"connection closed"


def valid_channel(channel) -> str | None:
    """Channels are non-empty strings without spaces (numbers convert, as
    everywhere in Lua)."""
    name = lua_string(channel)
    if not name or b" " in name:
        return None
    return name.decode("utf-8", "replace")


def context_table(value) -> dict | None:
    """What set_context stores: a Lua table's content keyed by strings; an
    array table {v1, v2} is keyed "1", "2" like any other number key."""
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value, 1)}
    return value if isinstance(value, dict) else None


def bridge(vm) -> dict:
    lookup, to_lua, hub, mesh = vm.lookup, vm.to_lua, vm.hub, vm.mesh

    def remote_addr(cid, *_):
        conn = lookup(cid)
        return conn.remote_addr.encode() if conn else None

    def context(cid, *_):
        conn = lookup(cid)
        return to_lua(dict(conn.context)) if conn else to_lua({})

    def context_value(cid, key=None, *_):
        conn, name = lookup(cid), lua_string(key)
        if conn is None or name is None:
            return None
        return to_lua(conn.context.get(name.decode("utf-8", "replace")))

    def set_context(cid, table=None, *_):
        conn = lookup(cid)
        if conn is None:
            return CLOSED
        try:
            value = context_table(from_lua(table))
        except ConversionError as exc:
            return err(f"set_context: {exc}")
        if value is None:
            return bad_argument(1, "set_context", "table", table)[1]
        conn.set_context(value)
        return None

    def set_context_value(cid, key=None, value=None, *_):
        conn = lookup(cid)
        if conn is None:
            return CLOSED
        name = lua_string(key)
        if not name:
            return bad_argument(1, "set_context_value", "non-empty string", key)[1]
        try:
            converted = from_lua(value)
        except ConversionError as exc:
            return err(f"set_context_value: {exc}")
        conn.set_context_value(name.decode("utf-8", "replace"), converted)
        return None

    def wait_context_value(cid, key=None, timeout=None, *_):
        conn = lookup(cid)
        if conn is None:
            return fail("connection closed")
        name = lua_string(key)
        if not name:
            return bad_argument(1, "wait_context_value", "non-empty string", key)
        if timeout is not None and (type(timeout) not in (int, float) or timeout < 0):
            return bad_argument(2, "wait_context_value", "number of seconds", timeout)
        name_text = name.decode("utf-8", "replace")

        async def wait():
            if timeout == 0:  # a zero timeout looks once and never waits
                return to_lua(conn.context.get(name_text)), None
            value = await conn.wait_context_value(name_text, timeout)
            return to_lua(value), None
        return wait, None

    def subscribe(cid, *channels):
        return _change_subscriptions(cid, channels, "subscribe", mesh.subscribe)

    def unsubscribe(cid, *channels):
        return _change_subscriptions(cid, channels, "unsubscribe", mesh.unsubscribe)

    def _change_subscriptions(cid, channels, fname, apply):
        conn = lookup(cid)
        if conn is None or conn.closing:
            return CLOSED
        if not channels:
            return err(f"{fname}: no channel given")
        names = []
        for i, channel in enumerate(channels, 1):
            name = valid_channel(channel)
            if name is None:
                return err(f"bad argument #{i} to '{fname}' (channel must be a non-empty string without spaces)")
            names.append(name)
        for name in names:
            apply(conn, name)
        return None

    # On every conn:send: the usual arguments (a string, no kind) and size cost no call.
    def send(cid, data=None, kind=None, *_):
        conn = lookup(cid)
        if conn is None:
            return CLOSED
        payload = data if type(data) is bytes else lua_string(data)
        binary = False if kind is None else frame_kind(kind)
        if payload is None:
            return bad_argument(1, "send", "string", data)[1]
        if binary is None:
            return bad_argument(2, "send", "'text' or 'binary'", kind)[1]
        try:
            if len(payload) > hub.max_payload:
                hub.check_size(payload)  # raises, with the message
            failure = conn.deliver(payload, binary, True)  # why not sent: closed, encoding failed
        except PayloadError as exc:  # too big, or text that is not UTF-8
            return err(f"send: {exc}")
        return None if failure is None else failure.encode()

    def close(cid, *_):
        conn = lookup(cid)
        if conn is None:
            return CLOSED
        conn.close(CLOSE_NORMAL)
        return None

    return {
        "remote_addr": remote_addr, "context": context, "context_value": context_value,
        "set_context": set_context, "set_context_value": set_context_value,
        "wait_context_value": wait_context_value, "subscribe": subscribe,
        "unsubscribe": unsubscribe, "send": send, "close": close,
    }
