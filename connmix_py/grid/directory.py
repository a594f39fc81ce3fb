"""The grid's directory: the live nodes, read from the broker's registry.

Each node keeps a JSON record at ``node_key(id)`` (a short TTL its heartbeat
refreshes) and its id in ``NODES_SET``. A reader takes the set, reads every
record with one MGET (the keys share one cluster slot), prunes the ids whose
record expired (a node that died without unregistering), strips each
record's claim ``token`` and sorts by id. Used by ``/v1/nodes`` on a grid
node and by ``connmix center``.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from redis.exceptions import RedisError

from .keys import NODES_SET, node_key

log = logging.getLogger("connmix.grid.directory")

# Removes an id from the set only while its record is still absent, in one
# step: a node that claims the id again between our MGET and this SREM
# keeps its place. KEYS[1] is the set, KEYS[2..] the records; ARGV the ids.
_PRUNE = """
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('SREM', KEYS[1], ARGV[i - 1]) end
end
return 0
"""


class RegistryUnavailable(ConnectionError):
    """The broker could not be asked; the message is one line."""


class Directory:
    def __init__(self, client: Any, display: str = "the broker", log_outages: bool = True) -> None:
        """client: redis-py's (registry.command_client: its timeouts make an
        unreachable broker a quick 503, not a hang); the caller closes it.
        log_outages=False where the outage is logged already (a grid node's
        transport reports it)."""
        self._client = client
        self._display = display  # the broker's URL without its password, for messages
        self._log_outages = log_outages
        self._malformed: set[int] = set()  # ids already warned about
        self.reachable = True  # as of the last read; an outage is logged once
        self._problem: str | None = None  # why the broker did not answer last time
        self._checked_at = float("-inf")  # loop time of the last answer or failure

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live node's record without its token, by id. Raises
        RegistryUnavailable."""
        try:
            members = await self._client.smembers(NODES_SET)
            ids = sorted(int(member) for member in members if member.isdigit())
            records = await self._client.mget([node_key(node_id) for node_id in ids]) if ids else []
            gone = [node_id for node_id, record in zip(ids, records, strict=True) if record is None]
            if gone:
                await self._client.eval(_PRUNE, 1 + len(gone), NODES_SET,
                                        *(node_key(node_id) for node_id in gone), *gone)
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(self._went_down(exc)) from None
        self._came_back()
        return [node for node_id, record in zip(ids, records, strict=True)
                if record is not None and (node := self._parse(node_id, record)) is not None]

    async def problem(self, max_age: float = 0.0) -> str | None:
        """None when the broker answers, else why not (one line). An answer
        younger than max_age seconds (of a read or an earlier check) is reused."""
        if asyncio.get_running_loop().time() - self._checked_at < max_age:
            return self._problem
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            return self._went_down(exc)
        self._came_back()
        return None

    def _parse(self, node_id: int, record: bytes | str) -> dict[str, Any] | None:
        try:
            node = orjson.loads(record)
            if not isinstance(node, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if node_id not in self._malformed:  # once per id, not on every read
                self._malformed.add(node_id)
                log.warning("registry: the record of node %d is not a node's record (%s); not listed", node_id, exc)
            return None
        if node.get("servers") == []:
            return None  # claimed its id, not listening yet: a backend could not use it
        node.pop("token", None)  # the claim's secret: only its owner needs it
        return node

    def _went_down(self, exc: BaseException) -> str:
        """Note the outage (logged once); its one-line description."""
        self._problem = f"broker {self._display} unreachable: {exc}"
        self._checked_at = asyncio.get_running_loop().time()
        if self.reachable:
            self.reachable = False
            if self._log_outages:
                log.warning("registry: %s", self._problem)
        return self._problem

    def _came_back(self) -> None:
        self._problem = None
        self._checked_at = asyncio.get_running_loop().time()
        if not self.reachable:
            self.reachable = True
            if self._log_outages:
                log.info("registry: broker %s reachable again", self._display)
