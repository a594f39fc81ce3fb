"""Discovery as CONNMIX's center answers it and its PHP client reads it:
``GET /version`` (the API versions) and ``GET /v1/nodes`` (where each
node's apiServer is). Without a broker, the node lists itself; with one
(a grid node, or ``connmix center``) every live node of the grid is listed
from the broker's registry (grid/directory.py), each record as the node
registered it, without its claim token.

The address listed: the apiServer's ``bind`` when it names one address;
when it binds every address (0.0.0.0, ::), the local address the discovery
request arrived on, which the asking backend has just shown it can reach.
"""
from __future__ import annotations

import ipaddress
from typing import Callable

import orjson
from aiohttp import web

from ..grid.directory import Directory, RegistryUnavailable

ANY_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})


def _host_port(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:  # a host name
        pass
    return f"{host}:{port}"


def node_address(request: web.Request, bind: str, port: int) -> str:
    if bind not in ANY_ADDRESSES:
        return _host_port(bind, port)
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    host = sockname[0] if sockname else "127.0.0.1"
    return _host_port(host.removeprefix("::ffff:"), port)


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def add_routes(app: web.Application, bind: str, port: Callable[[], int],
               directory: Directory | None = None) -> None:
    """``port``: the apiServer's port once listening (the real one when 0
    was asked). ``directory``: the grid's registry, when there is a broker."""

    async def version(request: web.Request) -> web.Response:
        return _json({"apis": ["v1"]})

    async def this_node(request: web.Request) -> web.Response:
        address = node_address(request, bind, port())
        # The current PHP client reads api_server, older ones host.
        return _json({"nodes": [{"api_server": address, "host": address}]})

    async def grid_nodes(request: web.Request) -> web.Response:
        assert directory is not None
        try:
            return _json({"nodes": await directory.nodes()})
        except RegistryUnavailable as exc:  # no guess at who is alive: the caller retries
            return _json({"error": str(exc)}, status=503)

    app.router.add_get("/version", version)
    app.router.add_get("/v1/nodes", this_node if directory is None else grid_nodes)
