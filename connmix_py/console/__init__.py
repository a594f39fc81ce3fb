"""The web console on the apiServer: GET /console (a page of static files
shipped in this package) and the read endpoints its scripts poll.

Every route sits behind the access middleware like the rest of the API:
looking (GET) needs the read role; the page's publish and send forms post to
/v1/mesh/publish and /v1/mesh/send, which need write.
"""
from __future__ import annotations

import os
from typing import Any

import orjson
from aiohttp import web

from ..hub import Hub
from ..api.requests import ApiError, channel_param
from ..metrics import Metrics

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# The channel list is for a person to read: longer lists are cut, and say so.
MAX_LISTED_CHANNELS = 500


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def readable(value: Any) -> Any:
    """A context value as JSON can show it: Lua strings are bytes here
    (shown as UTF-8, a bad byte as U+FFFD), and a nested table may have
    non-string keys."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(readable(key)): readable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [readable(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def summary(hub: Hub, metrics: Metrics, node_id: int) -> dict[str, Any]:
    """This node's live figures; the page turns the totals into rates."""
    servers = []
    for counters in metrics.servers:
        server = counters.server
        servers.append({"protocol": server.settings.protocol, "port": server.port,
                        "path": server.settings.path if server.settings.protocol == "websocket" else None,
                        "connections": len(server.conns)})
    messages_in = sum(traffic.messages_in for traffic in metrics.traffic.values())
    messages_out = sum(traffic.messages_out for traffic in metrics.traffic.values())
    messages_out += sum(conn.frames_sent for conn in hub)  # open connections fold theirs in when they end
    return {"node": node_id, "servers": servers, **hub.stats(),
            "messages_in": messages_in, "messages_out": messages_out,
            "lua_errors": sum(script.errors + script.budget_stops for script in metrics.scripts.values())}


def channels(hub: Hub) -> dict[str, Any]:
    names = sorted(hub.channels)
    return {"channels": [{"name": name, "subscribers": _count(hub, name)} for name in names[:MAX_LISTED_CHANNELS]],
            "total": len(names)}


def _count(hub: Hub, channel: str) -> int:
    return sum(len(members) for members in hub.channels.get(channel, {}).values())


def subscribers(hub: Hub, channel: str) -> dict[str, Any]:
    """Who is subscribed to channel on this node, with each connection's context."""
    conns = [conn for members in hub.channels.get(channel, {}).values() for conn in members]
    conns.sort(key=lambda conn: conn.client_id)
    return {"channel": channel, "subscribers": [
        {"client_id": conn.client_id, "remote": conn.remote_addr, "port": getattr(conn.server, "port", None),
         "channels": sorted(conn.channels), "context": readable(conn.context)} for conn in conns]}


def add_routes(app: web.Application, hub: Hub, metrics: Metrics, node_id: int) -> None:
    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(os.path.join(STATIC_DIR, "index.html"))

    async def get_summary(request: web.Request) -> web.Response:
        return _json({"E": None, "r": summary(hub, metrics, node_id)})

    async def get_channels(request: web.Request) -> web.Response:
        return _json({"E": None, "r": channels(hub)})

    async def get_channel(request: web.Request) -> web.Response:
        try:
            name = channel_param(request.query.get("c"))
        except ApiError as error:
            return _json({"E": error.body()})
        return _json({"E": None, "r": subscribers(hub, name)})

    app.router.add_get("/console", page)
    app.router.add_static("/console/static/", STATIC_DIR)
    app.router.add_get("/v1/console/summary", get_summary)
    app.router.add_get("/v1/console/channels", get_channels)
    app.router.add_get("/v1/console/channel", get_channel)
