"""Every name the grid uses on the broker, in one place.

Keys share the hash tag ``{connmix}`` so that, on a Redis Cluster, the
registry lives in one slot and can be read with one MGET. Pub/sub channels
carry no tag: on a cluster, sharded pub/sub spreads them over the shards.
"""
from __future__ import annotations

# A node's registration: JSON (see registry), with a short TTL a heartbeat refreshes.
NODE_TTL_MS = 5000
HEARTBEAT_SECONDS = 1.0
NODES_SET = "{connmix}:nodes"  # ids of nodes that registered (stale ids are pruned on read)


def node_key(node_id: int) -> str:
    return f"{{connmix}}:node:{node_id}"


def channel_topic(channel: str) -> str:
    """The broker channel a mesh channel's publishes travel on."""
    return f"connmix:c:{channel}"


def node_inbox(node_id: int) -> str:
    """The broker channel one node listens on: sends, conn.calls and the
    replies to its publishes and requests."""
    return f"connmix:n:{node_id}"
