"""This node's connections and its channel -> connections index; fan-out.

A channel's members are grouped by their connection's encoder (conn.Encoder):
a publish encodes the payload once per group (one websocket frame for every
websocket subscriber, one ``protocol_encode`` per socket server) and queues
the same bytes to each member of the group.

A connection's first publish of a turn of the event loop is written at
once; from its second, its frames are held (Connection.hold) and written
together when the turn ends. A backend pipelining publishes so costs each
subscriber two writes (system calls) per turn, not one per publish, and a
lone publish costs no more than before. Holding changes neither the counts
nor the order: each frame is judged against the send-queue bound as it is
queued, and any other frame for that connection queues behind the held ones.

A payload is refused up front (PayloadError, nothing sent to anyone) when it
is over ``max_payload`` bytes (engine.maxOutboundMessageSize) or when an
encoder refuses it (text that is not UTF-8, for websocket subscribers).
"""
from __future__ import annotations

import asyncio
from typing import Iterator

from .conn import Connection, EncodeError, Encoder, PayloadError
from .metrics import Metrics

# engine.maxOutboundMessageSize's default: what the HTTP API accepts as a body.
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024


class Hub:
    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD, metrics: Metrics | None = None) -> None:
        self.max_payload = max_payload
        self.metrics = metrics or Metrics()
        self.conns: dict[str, Connection] = {}
        self.channels: dict[str, dict[Encoder, set[Connection]]] = {}
        self.subscriptions = 0
        # The turns of the event loop that published, counted; the connections
        # this turn's publishes hold (None: no publish this turn yet).
        self.turn = 0
        self.holding: list[Connection] | None = None

    def add(self, conn: Connection) -> None:
        self.conns[conn.client_id] = conn
        self.metrics.connection_opened(conn)

    def remove(self, conn: Connection) -> list[str]:
        """Forget a closed connection and all its subscriptions; the channels
        it was the last local subscriber of."""
        if self.conns.pop(conn.client_id, None) is not None:
            self.metrics.connection_closed(conn)
        return [channel for channel in list(conn.channels) if self.unsubscribe(conn, channel)]

    def get(self, client_id: str) -> Connection | None:
        return self.conns.get(client_id)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self.conns.values()))

    # subscribe and unsubscribe report the channel's edges (its first and its
    # last local subscriber): the only moments the grid needs to hear of.

    def subscribe(self, conn: Connection, channel: str) -> bool:
        """Add conn to channel; True when it is the channel's first local subscriber."""
        if channel in conn.channels:
            return False
        conn.channels.add(channel)
        groups = self.channels.get(channel)
        first = groups is None
        if groups is None:
            groups = self.channels[channel] = {}
        members = groups.get(conn.encoder)
        if members is None:
            members = groups[conn.encoder] = set()
        members.add(conn)
        self.subscriptions += 1
        return first

    def unsubscribe(self, conn: Connection, channel: str) -> bool:
        """Take conn off channel; True when it was the channel's last local subscriber."""
        if channel not in conn.channels:
            return False
        conn.channels.discard(channel)
        self.subscriptions -= 1
        groups = self.channels.get(channel)
        if groups is None:
            return False
        members = groups.get(conn.encoder)
        if members is not None:
            members.discard(conn)
            if not members:
                del groups[conn.encoder]
        if groups:
            return False
        del self.channels[channel]
        return True

    def check_size(self, data: bytes) -> None:
        """Refuse a payload over the outbound limit, before anyone gets it."""
        if len(data) > self.max_payload:
            raise PayloadError(f"payload of {len(data)} bytes is over the outbound limit of "
                               f"{self.max_payload} bytes (engine.maxOutboundMessageSize)")

    def publish(self, channel: str, data: bytes, binary: bool = False) -> tuple[int, int]:
        """Encode once per encoder, write to every subscriber; (delivered, failed).
        Raises PayloadError (nothing written) when the payload is refused."""
        self.check_size(data)
        metrics = self.metrics
        groups = self.channels.get(channel)
        if not groups:
            metrics.publishes += 1
            return 0, 0
        delivered = failed = 0
        # Every group is encoded before anything is written, so a refused
        # payload reaches nobody. Encoding may run Lua and a write may abort
        # a slow client; both can change the index: iterate copies.
        encoded: list[tuple[bytes, tuple[Connection, ...]]] = []
        for encoder, members in tuple(groups.items()):
            receivers = tuple(members)  # never empty: an emptied group is deleted
            try:
                encoded.append((encoder(data, binary, None), receivers))
            except EncodeError:  # the encoder logged why
                failed += len(receivers)
                metrics.group_sent(receivers[0], 0, len(receivers))
        metrics.publishes += 1
        holding = self.holding
        if holding is None:
            holding = self.holding = []
            asyncio.get_running_loop().call_soon(self.end_turn)
        turn = self.turn
        for wire, receivers in encoded:
            sent = 0
            size = len(wire)
            for conn in receivers:
                held = conn.held
                if held is None:
                    # Its second publish this turn, and it can be held: hold it.
                    if conn.last_turn == turn and conn.hold():
                        holding.append(conn)
                        held = conn.held
                    else:
                        # The first of this turn (or not open, or closing):
                        # Connection.write_frame, its plain case inlined.
                        conn.last_turn = turn
                        transport = conn.writer
                        if transport is not None and not transport.is_closing():
                            transport.write(wire)
                            conn.sent_total += size
                            queued = transport.get_write_buffer_size()
                            if not queued or conn.queue_grew(size, queued):
                                sent += 1
                        elif conn.write_frame(wire):
                            sent += 1
                        continue
                # Connection.write_frame's held case, inlined.
                held.append(wire)  # type: ignore[union-attr]
                conn.sent_total += size
                total = conn.held_size + size
                conn.held_size = total
                if total < conn.held_cap or conn.over_cap():
                    sent += 1
            # Counted once per group, not per delivery: the fan-out loop stays bare.
            metrics.group_sent(receivers[0], sent, len(receivers) - sent)
            delivered += sent
            failed += len(receivers) - sent
        metrics.deliveries += delivered
        metrics.delivery_failures += failed
        return delivered, failed

    def end_turn(self) -> None:
        """Write what this turn's publishes held, one write per connection."""
        holding, self.holding = self.holding, None
        self.turn += 1
        for conn in holding or ():
            conn.release()

    def stats(self) -> dict[str, int]:
        return {"connections": len(self.conns), "channels": len(self.channels),
                "subscriptions": self.subscriptions}
