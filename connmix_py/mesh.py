"""publish / send for the whole grid.

With dev and single there is one node, so the mesh is this node's hub; a
broker for several nodes plugs in here without the callers changing.
"""
from __future__ import annotations

from .hub import Hub


class Mesh:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def publish(self, channel: str, data: bytes, binary: bool = False) -> tuple[int, int]:
        """Deliver to every subscriber of channel; (delivered, failed).
        Raises conn.PayloadError when the payload is refused."""
        return self.hub.publish(channel, data, binary)

    def send(self, client_id: str, data: bytes, binary: bool = False) -> bool:
        """Deliver to one connection; False when it is unknown or closed.
        Raises conn.PayloadError when the payload is refused."""
        self.hub.check_size(data)
        conn = self.hub.get(client_id)
        return conn is not None and conn.send(data, binary)
