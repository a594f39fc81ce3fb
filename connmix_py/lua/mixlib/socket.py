"""conn:clear_buffer() of socket connections (mix.buffer lives in the prelude:
it is pure Lua, so reading a packet header never crosses into Python)."""
from __future__ import annotations

from .conn import CLOSED
from .values import err


def bridge(vm) -> dict:
    lookup = vm.lookup

    def clear_buffer(cid, *_):  # extra Lua arguments are ignored
        conn = lookup(cid)
        if conn is None:
            return CLOSED
        clear = getattr(conn.session, "clear_buffer", None)
        if clear is None:
            return err("clear_buffer: not a socket connection")
        clear()
        return None

    return {"clear_buffer": clear_buffer}
