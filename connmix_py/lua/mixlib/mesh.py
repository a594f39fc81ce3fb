"""mix.mesh.publish / mix.mesh.send: reach connections anywhere in the grid.

Both are waiting calls (a grid-wide publish needs a round trip), that
finish at once when the broker does not wait: the Mesh's coroutine is run to
its first suspension here. Finished (one node, the in-process broker): its
results go straight back to Lua, no yield, so a loop of publishes stays one
slice under the CPU budget and costs no event-loop turn. Suspended: Lua gets
a handle and the calling coroutine waits on it (prelude.lua ``settled``).
"""
from __future__ import annotations

from ...conn import PayloadError
from ...eager import at_once_or_handle
from .values import bad_argument, err, fail, lua_string


def frame_kind(kind) -> bool | None:
    """True for binary, False for text, None when the type is unknown."""
    if kind is None or kind == b"text":
        return False
    if kind == b"binary":
        return True
    return None


async def _publish(mesh, channel: str, payload: bytes, binary: bool) -> tuple:
    """(delivered, failed), or (nil, err) when nobody got it."""
    try:
        return await mesh.publish(channel, payload, binary)
    except PayloadError as exc:  # too big, or text that is not UTF-8
        return fail(f"publish: {exc}")


async def _send(mesh, client_id: str, payload: bytes, binary: bool) -> tuple:
    """One result: nil when sent, else why not."""
    try:
        sent = await mesh.send(client_id, payload, binary)
    except PayloadError as exc:
        return (err(f"send: {exc}"),)
    return (None if sent else err(f"send failed: client {client_id} not found or closed"),)


def bridge(vm) -> dict:
    mesh = vm.mesh

    # Lua passes as many arguments as the caller wrote: extras are ignored.
    def mesh_publish(channel=None, data=None, kind=None, *_):
        ch, payload, binary = lua_string(channel), lua_string(data), frame_kind(kind)
        if not ch:
            return bad_argument(1, "publish", "non-empty channel string", channel)
        if payload is None:
            return bad_argument(2, "publish", "string", data)
        if binary is None:
            return bad_argument(3, "publish", "'text' or 'binary'", kind)
        return at_once_or_handle(_publish(mesh, ch.decode("utf-8", "replace"), payload, binary))

    def mesh_send(client_id=None, data=None, kind=None, *_):
        cid, payload, binary = lua_string(client_id), lua_string(data), frame_kind(kind)
        if not cid:
            return bad_argument(1, "send", "non-empty client id string", client_id)[1]
        if payload is None:
            return bad_argument(2, "send", "string", data)[1]
        if binary is None:
            return bad_argument(3, "send", "'text' or 'binary'", kind)[1]
        return at_once_or_handle(_send(mesh, cid.decode("ascii", "replace"), payload, binary))

    return {"mesh_publish": mesh_publish, "mesh_send": mesh_send}
