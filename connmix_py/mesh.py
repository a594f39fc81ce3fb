"""The grid's one door: publish, send, subscriptions and conn.call.

Every bridge (Lua, the HTTP and WebSocket APIs, Engine) goes through the
Mesh, never straight to the Hub, so reaching other nodes is the broker's
business alone. The Mesh keeps this node's connections in the Hub and tells
the broker only a channel's edges: its first local subscriber (the node now
wants the channel) and its last (it no longer does).

With dev and single there is one node and the broker is ``InProcessBroker``:
a publish is this node's fan-out, and a client that is not here is nowhere.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from .conn import Connection
from .hub import Hub


class Broker(Protocol):
    """How a node reaches the rest of the grid (what a Redis broker implements).

    subscribe/unsubscribe are notes, not round trips: they are called on a
    channel's edges only, and a networked broker may batch them."""

    def subscribe(self, channel: str) -> None:
        """This node has its first subscriber of channel."""

    def unsubscribe(self, channel: str) -> None:
        """This node's last subscriber of channel left."""

    async def publish(self, channel: str, data: bytes, binary: bool) -> tuple[int, int]:
        """Deliver to the channel's subscribers on every node (this one too);
        (delivered, failed) over the grid."""
        ...

    async def send(self, client_id: str, data: bytes, binary: bool) -> bool:
        """Deliver to a client that is not on this node; False when no node has it."""
        ...

    async def call(self, client_id: str, name: str, argument: Any) -> bool:
        """Run conn.call on a client that is not on this node; False when no node has it."""
        ...


class InProcessBroker:
    """One node, no network: a publish is the hub's fan-out; its coroutines
    never suspend, so awaiting them costs no event-loop round trip."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def subscribe(self, channel: str) -> None:
        pass

    def unsubscribe(self, channel: str) -> None:
        pass

    async def publish(self, channel: str, data: bytes, binary: bool) -> tuple[int, int]:
        return self.hub.publish(channel, data, binary)

    async def send(self, client_id: str, data: bytes, binary: bool) -> bool:
        return False

    async def call(self, client_id: str, name: str, argument: Any) -> bool:
        return False


class Mesh:
    def __init__(self, hub: Hub, broker: Broker | None = None) -> None:
        self.hub = hub
        self.broker: Broker = broker if broker is not None else InProcessBroker(hub)

    # -- subscriptions and connection removal (edges go to the broker) ------------

    def subscribe(self, conn: Connection, channel: str) -> None:
        if self.hub.subscribe(conn, channel):
            self.broker.subscribe(channel)

    def unsubscribe(self, conn: Connection, channel: str) -> None:
        if self.hub.unsubscribe(conn, channel):
            self.broker.unsubscribe(channel)

    def remove(self, conn: Connection) -> None:
        """A connection closed: forget it and all its subscriptions."""
        for channel in self.hub.remove(conn):
            self.broker.unsubscribe(channel)

    # -- delivery -------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, binary: bool = False) -> tuple[int, int]:
        """Deliver to every subscriber of channel; (delivered, failed).
        Raises conn.PayloadError when the payload is refused."""
        self.hub.check_size(data)
        return await self.broker.publish(channel, data, binary)

    async def send(self, client_id: str, data: bytes, binary: bool = False) -> bool:
        """Deliver to one connection; False when it is unknown or closed.
        Raises conn.PayloadError when the payload is refused."""
        self.hub.check_size(data)
        conn = self.hub.get(client_id)
        if conn is None:
            return await self.broker.send(client_id, data, binary)
        return conn.send(data, binary)

    # -- conn.call --------------------------------------------------------------------

    async def call(self, client_id: str, name: str, argument: Any) -> bool:
        """Run conn.call function ``name`` (one of CALLS) with its validated
        argument on a client; False when it is unknown or closed."""
        conn = self.hub.get(client_id)
        if conn is None:
            return await self.broker.call(client_id, name, argument)
        if conn.closing:
            return False
        CALLS[name](self, conn, argument)
        return True


def _subscribe(mesh: Mesh, conn: Connection, channels: list[str]) -> None:
    for channel in channels:
        mesh.subscribe(conn, channel)


def _unsubscribe(mesh: Mesh, conn: Connection, channels: list[str]) -> None:
    for channel in channels:
        mesh.unsubscribe(conn, channel)


def _set_context(mesh: Mesh, conn: Connection, context: dict) -> None:
    conn.set_context(context)


def _set_context_value(mesh: Mesh, conn: Connection, key_value: tuple[str, Any]) -> None:
    conn.set_context_value(*key_value)


# conn.call's functions, applied to a client of this node: the same
# Connection and Mesh methods a script's conn:subscribe / conn:set_context run.
CALLS: dict[str, Callable[[Mesh, Connection, Any], None]] = {
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "set_context": _set_context,
    "set_context_value": _set_context_value,
}
