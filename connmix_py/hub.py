"""This node's connections and its channel -> connections index; fan-out.

A channel's members are grouped by their connection's encoder (conn.Encoder):
a publish encodes the payload once per group (one websocket frame for every
websocket subscriber, one ``protocol_encode`` per socket server) and writes
the same bytes to each member of the group.
"""
from __future__ import annotations

from typing import Iterator

from .conn import Connection, EncodeError, Encoder


class Hub:
    def __init__(self) -> None:
        self.conns: dict[str, Connection] = {}
        self.channels: dict[str, dict[Encoder, set[Connection]]] = {}
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
        groups = self.channels.get(channel)
        if groups is None:
            groups = self.channels[channel] = {}
        members = groups.get(conn.encoder)
        if members is None:
            members = groups[conn.encoder] = set()
        members.add(conn)
        self.subscriptions += 1

    def unsubscribe(self, conn: Connection, channel: str) -> None:
        if channel not in conn.channels:
            return
        conn.channels.discard(channel)
        groups = self.channels.get(channel)
        if groups is not None:
            members = groups.get(conn.encoder)
            if members is not None:
                members.discard(conn)
                if not members:
                    del groups[conn.encoder]
            if not groups:
                del self.channels[channel]
        self.subscriptions -= 1

    def publish(self, channel: str, data: bytes, binary: bool = False) -> tuple[int, int]:
        """Encode once per encoder, write to every subscriber; (delivered, failed)."""
        groups = self.channels.get(channel)
        if not groups:
            return 0, 0
        delivered = failed = 0
        # Encoding may run Lua and a write may abort a slow client; both can
        # change the index: iterate copies.
        for encoder, members in tuple(groups.items()):
            try:
                wire = encoder(data, binary, None)
            except EncodeError:  # the encoder logged why
                failed += len(members)
                continue
            for conn in tuple(members):
                if conn.write_frame(wire):
                    delivered += 1
                else:
                    failed += 1
        return delivered, failed

    def stats(self) -> dict[str, int]:
        return {"connections": len(self.conns), "channels": len(self.channels),
                "subscriptions": self.subscriptions}
