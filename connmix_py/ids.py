"""Client ids: decimal strings, never reused, that name their node.

An id is a 63-bit number laid out like a snowflake id:

    milliseconds since EPOCH (41 bits) | node (10 bits) | sequence (12 bits)

so it fits a signed 64-bit integer (backends send ids back as JSON
integers), grows with time, and ``node_of(id)`` tells which node holds the
connection. Strings, because Lua 5.1 prints numbers above 1e14 as 1.46e+18,
which breaks ``"user:" .. id``.

Never reused: within a process the timestamp never goes back; when the clock
steps back, or more than 4096 ids are asked in one millisecond, ids borrow
the next milliseconds instead. Across restarts nothing is stored: a new
process only issues ids from the millisecond after it was created, so a
restart (even ``kill -9``) follows every id of the process before it, unless
the wall clock was set back past the old process's last id (see SECURITY.md).
"""
from __future__ import annotations

import time
from typing import Callable

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z; 41 bits of ms last until 2093
NODE_BITS = 10
SEQUENCE_BITS = 12
MAX_NODE = (1 << NODE_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
MAX_ID = (1 << 63) - 1


def wall_clock_ms() -> int:
    """Milliseconds since EPOCH (wall clock: it must mean the same to the next process)."""
    return time.time_ns() // 1_000_000 - EPOCH_MS


class ClientIds:
    def __init__(self, node_id: int, clock: Callable[[], int] = wall_clock_ms) -> None:
        if isinstance(node_id, bool) or not isinstance(node_id, int) or not 0 <= node_id <= MAX_NODE:
            raise ValueError(f"node id must be an integer 0-{MAX_NODE}, got {node_id!r}")
        self.node_id = node_id
        self._clock = clock
        # The process before this one may have issued ids in the current
        # millisecond: start in the next one. Waits at most 1 ms, once.
        created = clock()
        while clock() <= created:
            time.sleep(0.0001)
        self._last_ms = max(created, 0)
        self._sequence = MAX_SEQUENCE  # `created` counts as used up

    def _now(self) -> int:
        return max(self._clock(), 0)  # a clock before EPOCH: ids borrow from 0 on

    def next(self) -> str:
        now = self._now()
        if now > self._last_ms:
            self._last_ms, self._sequence = now, 0
        elif self._sequence < MAX_SEQUENCE:
            self._sequence += 1  # same millisecond, or the clock went back: go on where we were
        else:
            self._last_ms, self._sequence = self._last_ms + 1, 0  # borrow the next millisecond
        return str(self._last_ms << (NODE_BITS + SEQUENCE_BITS)
                   | self.node_id << SEQUENCE_BITS | self._sequence)


def node_of(client_id: str) -> int | None:
    """The node an id was issued by, None for anything that is not an id."""
    if not (client_id.isascii() and client_id.isdigit()) or len(client_id) > len(str(MAX_ID)):
        return None
    value = int(client_id)
    return (value >> SEQUENCE_BITS) & MAX_NODE if value <= MAX_ID else None
