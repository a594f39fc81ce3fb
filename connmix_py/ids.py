"""Client ids: decimal strings, unique in the grid, that name their node.

id = node * NODE_SPAN + sequence, so ``node_of(id)`` tells which node holds
the connection. Strings, because Lua 5.1 prints numbers above 1e14 as
1.46e+18, which breaks ``"user:" .. id``.
"""
from __future__ import annotations

import itertools

NODE_SPAN = 10 ** 12


class ClientIds:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self._sequence = itertools.count(1)

    def next(self) -> str:
        return str(self.node_id * NODE_SPAN + next(self._sequence))


def node_of(client_id: str) -> int | None:
    return int(client_id) // NODE_SPAN if client_id.isdigit() else None
