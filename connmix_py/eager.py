"""Run a coroutine at once, and hand over what is left only if it waits.

The Mesh's coroutines finish without suspending on one node (the in-process
broker) and suspend on a grid node (a round trip to the broker). Callers that
must not pay a task or an event-loop turn for the common case (Lua's
mix.mesh.publish, the /ws/v1 session) run them here first.
"""
from __future__ import annotations

from typing import Any, Coroutine, Generator


class _Rest:
    """The rest of a coroutine already run to its first suspension, as an
    awaitable: what it yielded goes up to the task, what comes back goes in."""

    def __init__(self, coro: Coroutine, yielded: Any) -> None:
        self.coro, self.yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.yielded
        while True:
            try:
                try:
                    sent = yield value
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # cancelled: the coroutine gets it
                    value = coro.throw(exc)
                else:
                    value = coro.send(sent)
            except StopIteration as done:
                return done.value


def at_once_or_handle(coro: Coroutine) -> Any:
    """The coroutine's result if it finishes without suspending, else a
    handle (prelude.lua ``await``) that finishes it on the event loop."""
    try:
        yielded = coro.send(None)
    except StopIteration as done:
        return done.value
    rest = _Rest(coro, yielded)

    async def handle() -> Any:
        return await rest
    return handle
