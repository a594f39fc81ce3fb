"""The end of a connection, the same for every server kind: once its socket
is gone, a callback still waiting is woken and finishes, then on_close runs
exactly once, then the hub, the mesh and the VM forget the connection."""
from __future__ import annotations

import asyncio

from ..conn import Connection
from ..lua.vm import LuaVM


async def run_on_close(vm: LuaVM, conn: Connection, worker: asyncio.Task | None) -> None:
    """End the waits of the callback still running (wait_context_value
    returns nil), let it finish, then run on_close with the close reason."""
    if worker is not None and not worker.done():
        conn.end_waits()
        try:
            await worker
        except Exception:
            conn.log.exception("handling input failed")
    err = conn.close_err
    pending = vm.call(conn, "on_close", conn.id_bytes, err.encode() if err else None)
    if pending is not None:
        await pending


def forget(vm: LuaVM, conn: Connection) -> None:
    """Take a finished connection out of the hub, the mesh and the VM."""
    vm.mesh.remove(conn)
    vm.forget(conn)
