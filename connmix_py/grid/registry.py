"""A node's registration on the broker: claim a node id, keep the record
alive, give it back at stop.

The record (JSON at ``node_key(id)``, its id in ``NODES_SET``) lives
NODE_TTL_MS unless refreshed: a heartbeat rewrites it every
HEARTBEAT_SECONDS, only while the stored token is this node's, so a node
that was away longer than the TTL never overwrites a newcomer that claimed
its id meanwhile (it logs the lost claim instead). A record that is gone
(expired, or the broker restarted empty) is claimed again under the same id.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import Any, Callable

import orjson
import redis.asyncio as redis
from redis.asyncio.connection import parse_url
from redis.exceptions import RedisError

from ..ids import MAX_NODE
from .broker_url import BrokerUrl
from .keys import HEARTBEAT_SECONDS, NODE_TTL_MS, NODES_SET, node_key
from .transport import BrokerDown

log = logging.getLogger("connmix.grid")

FIRST_NODE = 1  # node 0 is the id of a node outside any grid (dev/single)
COMMAND_TIMEOUT = 2.0  # seconds for one registry command

# KEYS: the node's key, NODES_SET. ARGV: token, record, ttl ms, node id.
# 1: refreshed; 2: the record was gone and is claimed again; 0: another
# node holds the id now.
_HEARTBEAT = """
local current = redis.call('GET', KEYS[1])
local state = 2
if current then
  local ok, stored = pcall(cjson.decode, current)
  if not ok or type(stored) ~= 'table' or stored['token'] ~= ARGV[1] then return 0 end
  state = 1
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
return state
"""
# KEYS: the node's key, NODES_SET. ARGV: token, node id. Only this node's own record goes.
_UNREGISTER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, stored = pcall(cjson.decode, current)
  if ok and type(stored) == 'table' and stored['token'] == ARGV[1] then
    redis.call('DEL', KEYS[1])
  end
end
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""


def command_client(url: BrokerUrl) -> Any:
    """A redis-py client for the broker's keys (a cluster client for a cluster URL)."""
    options: dict[str, Any] = {"socket_connect_timeout": COMMAND_TIMEOUT, "socket_timeout": COMMAND_TIMEOUT}
    if url.cluster:
        return redis.RedisCluster.from_url(url.redis_py_url, **options)
    return redis.from_url(url.redis_py_url, **options)


def advertised_host(bind: str, url: BrokerUrl) -> str:
    """The address other machines reach this node's servers on: the bind
    address when it names one; when it binds every address, the local
    address of the route to the broker (peers reach the broker too)."""
    if bind not in ("", "0.0.0.0", "::", "[::]"):
        return bind
    options = parse_url(url.redis_py_url)
    if "host" not in options:  # a unix socket: the broker is on this machine
        return "127.0.0.1"
    try:
        family = socket.AF_INET6 if ":" in options["host"] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((options["host"], options.get("port", 6379)))  # sends nothing
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


class Registry:
    def __init__(self, url: BrokerUrl, describe: Callable[[], dict[str, Any]]) -> None:
        """describe(): the record's fields other than id, token and heartbeat."""
        self.url = url
        self.describe = describe
        self.client = command_client(url)
        self.token = secrets.token_hex(16)
        self.node_id = 0
        self.claimed = False  # False after a lost claim, until the id is ours again
        self.started = time.time()

    def record(self) -> bytes:
        fields = {"id": self.node_id, "token": self.token, **self.describe(),
                  "started": self.started, "heartbeat": time.time(), "pid": os.getpid()}
        return orjson.dumps(fields)

    async def claim(self) -> int:
        """Take the lowest free node id; raises BrokerDown."""
        try:
            for node_id in range(FIRST_NODE, MAX_NODE + 1):
                self.node_id = node_id
                if await self.client.set(node_key(node_id), self.record(), nx=True, px=NODE_TTL_MS):
                    await self.client.sadd(NODES_SET, node_id)
                    self.claimed = True
                    return node_id
        except (RedisError, OSError) as exc:
            raise BrokerDown(f"engine.broker: cannot register at {self.url.display}: {exc}") from None
        raise BrokerDown(f"engine.broker: every node id {FIRST_NODE}-{MAX_NODE} is taken at {self.url.display}")

    async def heartbeat(self) -> None:
        """Refresh the record (claim it again when it is gone); raises RedisError/OSError."""
        state = await self.client.eval(_HEARTBEAT, 2, node_key(self.node_id), NODES_SET, self.token,
                                       self.record(), NODE_TTL_MS, self.node_id)
        if state == 0:
            if self.claimed:
                log.error("node id %d was claimed by another node while this one was away from the broker: "
                          "client ids of the two may collide; restart this node to get a new id", self.node_id)
            self.claimed = False
        else:
            if state == 2:
                log.info("registered again as node %d at %s", self.node_id, self.url.display)
            self.claimed = True

    async def run(self) -> None:
        """Heartbeat until cancelled; an unreachable broker is the transport's
        to report, so failures here are only debug lines."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.heartbeat()
            except (RedisError, OSError) as exc:
                log.debug("heartbeat of node %d failed: %s", self.node_id, exc)

    async def unregister(self) -> None:
        try:
            await self.client.eval(_UNREGISTER, 2, node_key(self.node_id), NODES_SET, self.token, self.node_id)
        except (RedisError, OSError) as exc:
            log.warning("could not unregister node %d (its record expires by itself): %s", self.node_id, exc)

    async def close(self) -> None:
        await self.client.aclose()
