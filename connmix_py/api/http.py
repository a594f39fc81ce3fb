"""The HTTP API on apiServer: /v1/mesh/*, /v1/conn/call, /v1/stats, /metrics, /healthz, /readyz,
and /v1/openapi.json describing them (schema.py)."""
from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from ..metrics import CONTENT_TYPE, Metrics
from . import requests, schema
from .conn_call import conn_call
from .requests import ApiError, invalid


# Given as a header, not as content_type=, which aiohttp parses and rebuilds
# on every response (1.7 us of a publish's reply).
JSON_HEADERS = {"Content-Type": "application/json"}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=JSON_HEADERS)


def _result(result: Any) -> web.Response:
    return _json({"E": None, "r": result})


async def answer(action: Callable[[Any, Any], Awaitable[Any]], mesh, body: bytes) -> bytes:
    """The JSON reply of a POST route to its request body (the lean front in
    front.py answers publish and send with it too)."""
    try:
        try:
            params = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise invalid(f"invalid JSON body: {exc}") from None
        return orjson.dumps({"E": None, "r": await action(mesh, params)})
    except ApiError as error:
        return orjson.dumps({"E": error.body()})


def add_routes(app: web.Application, mesh, stats: Callable[[], dict], metrics: Metrics,
               not_ready: Callable[[], list[str]], health: Callable[[], dict] | None = None) -> None:
    """health: more fields for /healthz (a grid node's broker state)."""
    def endpoint(action: Callable[[Any, Any], Awaitable[Any]]):
        async def handle(request: web.Request) -> web.Response:
            return web.Response(body=await answer(action, mesh, await request.read()), headers=JSON_HEADERS)
        return handle

    def extra() -> dict:
        return health() if health is not None else {}

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok", **extra()})

    async def readyz(request: web.Request) -> web.Response:
        reasons = not_ready()
        if reasons:
            return _json({"status": "not ready", "reasons": reasons, **extra()}, status=503)
        return _json({"status": "ready", **extra()})

    async def get_stats(request: web.Request) -> web.Response:
        return _result(stats())

    app.router.add_post("/v1/mesh/publish", endpoint(requests.publish))
    app.router.add_post("/v1/mesh/send", endpoint(requests.send))
    # ours: CONNMIX has conn.call on the WebSocket API only.
    app.router.add_post("/v1/conn/call", endpoint(conn_call))
    async def get_metrics(request: web.Request) -> web.Response:
        # Prometheus text format; a GET, so the access middleware asks for role read.
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    from ..cli import installed_version  # here: cli imports the engine, which imports this module
    document = orjson.dumps(schema.openapi(installed_version()))

    async def get_openapi(request: web.Request) -> web.Response:
        return web.Response(body=document, headers=JSON_HEADERS)

    app.router.add_get("/v1/openapi.json", get_openapi)
    app.router.add_get("/v1/stats", get_stats)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)  # alive: the process answers
    app.router.add_get("/readyz", readyz)  # ready for traffic (load balancers, Kubernetes)
