"""This node's connections and its channel -> connections index; fan-out."""
from __future__ import annotations

from typing import Iterator

from . import frames
from .conn import Connection


class Hub:
    def __init__(self) -> None:
        self.conns: dict[str, Connection] = {}
        self.channels: dict[str, set[Connection]] = {}
        self.subscriptions = 0

    def add(self, conn: Connection) -> None:
        self.conns[conn.client_id] = conn

    def remove(self, conn: Connection) -> None:
        """Forget a closed connection and all its subscriptions."""
        self.conns.pop(conn.client_id, None)
        for channel in list(conn.channels):
            self.unsubscribe(conn, channel)

    def get(self, client_id: str) -> Connection | None:
        return self.conns.get(client_id)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self.conns.values()))

    def subscribe(self, conn: Connection, channel: str) -> None:
        if channel in conn.channels:
            return
        conn.channels.add(channel)
        members = self.channels.get(channel)
        if members is None:
            members = self.channels[channel] = set()
        members.add(conn)
        self.subscriptions += 1

    def unsubscribe(self, conn: Connection, channel: str) -> None:
        if channel not in conn.channels:
            return
        conn.channels.discard(channel)
        members = self.channels.get(channel)
        if members is not None:
            members.discard(conn)
            if not members:
                del self.channels[channel]
        self.subscriptions -= 1

    def publish(self, channel: str, data: bytes, binary: bool = False) -> tuple[int, int]:
        """Write one frame to every subscriber; (delivered, failed) counts."""
        members = self.channels.get(channel)
        if not members:
            return 0, 0
        frame = frames.binary_frame(data) if binary else frames.text_frame(data)
        delivered = 0
        # A write may abort a slow client, which changes the set: iterate a copy.
        targets = tuple(members)
        for conn in targets:
            if conn.write_frame(frame):
                delivered += 1
        return delivered, len(targets) - delivered

    def stats(self) -> dict[str, int]:
        return {"connections": len(self.conns), "channels": len(self.channels),
                "subscriptions": self.subscriptions}
