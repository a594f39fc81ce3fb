"""mix.mesh.publish / mix.mesh.send: reach connections anywhere in the grid.

Both are waiting calls (a grid-wide publish needs a round trip): after the
arguments are checked they return a handle the calling coroutine awaits
(prelude.lua ``await``); bad arguments are reported at once.
"""
from __future__ import annotations

from ...conn import PayloadError
from .values import bad_argument, err, fail, lua_string


def frame_kind(kind) -> bool | None:
    """True for binary, False for text, None when the type is unknown."""
    if kind is None or kind == b"text":
        return False
    if kind == b"binary":
        return True
    return None


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
        name = ch.decode("utf-8", "replace")

        async def publish():
            try:
                return await mesh.publish(name, payload, binary)
            except PayloadError as exc:  # too big, or text that is not UTF-8: nobody got it
                return fail(f"publish: {exc}")
        return publish, None

    def mesh_send(client_id=None, data=None, kind=None, *_):
        cid, payload, binary = lua_string(client_id), lua_string(data), frame_kind(kind)
        if not cid:
            return bad_argument(1, "send", "non-empty client id string", client_id)
        if payload is None:
            return bad_argument(2, "send", "string", data)
        if binary is None:
            return bad_argument(3, "send", "'text' or 'binary'", kind)
        target = cid.decode("ascii", "replace")

        async def send():  # one result: nil when sent, else why not
            try:
                sent = await mesh.send(target, payload, binary)
            except PayloadError as exc:
                return (err(f"send: {exc}"),)
            return (None if sent else err(f"send failed: client {target} not found or closed"),)
        return send, None

    return {"mesh_publish": mesh_publish, "mesh_send": mesh_send}
