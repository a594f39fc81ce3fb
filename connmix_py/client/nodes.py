"""Finding the nodes of a grid as CONNMIX's PHP client does: ``GET /version``
(the API version, "v1"), then ``GET /v1/nodes`` on a center or on any node;
each node's API address is its ``api_server`` (``host`` for older servers)."""
from __future__ import annotations

import asyncio
import logging

import aiohttp
import orjson

from .errors import AccessDenied, TransportError

log = logging.getLogger("connmix.client")

API_VERSION = "v1"
TIMEOUT = aiohttp.ClientTimeout(total=10)


class NoDiscovery(Exception):
    """The address answers but lists no nodes: a server without discovery
    (404), or a user without the read role discovery needs (403). The
    address itself is the only node."""


async def list_nodes(http: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> list[str]:
    """The API base URLs of the live nodes, in the order listed. Raises
    NoDiscovery; AccessDenied on wrong credentials; TransportError when the
    address cannot answer now (unreachable, or its registry is: try later)."""
    versions = await _get(http, f"{base}/version", headers)
    apis = versions.get("apis") if isinstance(versions, dict) else None
    if not isinstance(apis, list) or API_VERSION not in apis:
        raise NoDiscovery(f"{base}/version does not offer {API_VERSION}")
    listing = await _get(http, f"{base}/{API_VERSION}/nodes", headers)
    nodes = listing.get("nodes") if isinstance(listing, dict) else None
    if not isinstance(nodes, list):
        raise NoDiscovery(f"{base}/{API_VERSION}/nodes lists no nodes")
    scheme = base.partition("://")[0]
    found = []
    for node in nodes:
        address = (node.get("api_server") or node.get("host")) if isinstance(node, dict) else None
        if isinstance(address, str) and address:
            found.append(f"{scheme}://{address}")
    return list(dict.fromkeys(found))


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> object:
    try:
        async with http.get(url, headers=headers, timeout=TIMEOUT) as resp:
            status, body = resp.status, await resp.read()
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        raise TransportError(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    if status == 401:  # wrong or missing credentials: retrying cannot help
        raise AccessDenied(f"cannot list the nodes at {url}: HTTP 401", status)
    if status in (403, 404):
        raise NoDiscovery(f"{url}: HTTP {status}")
    if status != 200:
        raise TransportError(f"{url}: HTTP {status}: {body[:200].decode('utf-8', 'replace').strip()}", status)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NoDiscovery(f"{url}: not JSON") from None
