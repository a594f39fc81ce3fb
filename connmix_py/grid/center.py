"""``connmix center``: CONNMIX deployments start a center and point their
backends at its apiServer (``center.apiServer``, port 6787). Ours runs only
that apiServer: ``GET /version`` and ``GET /v1/nodes`` answered from the
broker's registry, so a backend configured with a center address finds every
node; ``/healthz`` and ``/readyz`` say whether the broker answers. It is
behind the same ``access.users`` middleware as a node's apiServer. It holds
no state: any number of centers may run, and one may restart at any time.
"""
from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from ..api import access, discovery, request_log
from ..config import Settings
from ..servers.http_limits import HttpLimits, limited_runner
from .broker_url import BrokerUrl
from .directory import Directory
from .registry import command_client

log = logging.getLogger("connmix.center")

NO_BROKER = ("engine.broker: connmix center reads the nodes from the broker's registry; "
             "set it as on the nodes, e.g. broker: redis://127.0.0.1:6379/0")


# Seconds the broker's last answer (to a read or a check) is reused by
# /healthz and /readyz: probes, which need no credentials, cost the broker at
# most one PING a second.
PROBE_REUSE_SECONDS = 1.0


class CenterError(Exception):
    """The center cannot start; the message is one line."""


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class Center:
    def __init__(self, settings: Settings, broker: BrokerUrl | None) -> None:
        if broker is None:
            raise CenterError(NO_BROKER)
        self.settings = settings
        self.broker = broker
        self.port = settings.center.api_server.port  # the real one once listening
        self.directory: Directory | None = None
        self._client: Any = None  # redis-py's, for the registry
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Check the broker answers, then listen. Raises CenterError."""
        self._client = command_client(self.broker)
        directory = Directory(self._client, self.broker.display)
        problem = await directory.problem()
        if problem is not None:
            await self.stop()
            raise CenterError(f"engine.broker: {problem}")
        self.directory = directory
        api = self.settings.center.api_server
        # A lambda, as on the engine: settings replaced later apply per request.
        app = web.Application(middlewares=[request_log.log_request,
                                           access.middleware(lambda: self.settings.access)])
        discovery.add_routes(app, api.bind, lambda: self.port, directory)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = limited_runner(app, HttpLimits(api.handshake_timeout, api.max_connections,
                                                      api.body_timeout))
        await self._runner.setup()
        site = web.TCPSite(self._runner, api.bind, api.port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise CenterError(f"center.apiServer.port: cannot listen: {exc.strerror or exc}") from None
        if api.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("center api server on %s:%d, nodes from broker %s", api.bind, self.port, self.broker.display)
        if not self.settings.access.users and not access.is_loopback(api.bind):
            log.warning("center api server on %s:%d has no access.users: anyone who can reach it may "
                        "list the nodes; add users or bind it to 127.0.0.1", api.bind, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.directory = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _healthz(self, request: web.Request) -> web.Response:
        # Alive whatever the broker does (restarting the center would not
        # bring the broker back); the broker's state is said beside it.
        # The same shape as a grid node's /healthz.
        problem = await self._broker_problem()
        return _json({"status": "ok", "broker": "connected" if problem is None else f"down: {problem}"})

    async def _readyz(self, request: web.Request) -> web.Response:
        # Without the broker /v1/nodes cannot be answered: send discovery elsewhere.
        problem = await self._broker_problem()
        if problem is not None:
            return _json({"status": "not ready", "reasons": [problem]}, status=503)
        return _json({"status": "ready"})

    async def _broker_problem(self) -> str | None:
        if self.directory is None:
            return "stopping"
        return await self.directory.problem(PROBE_REUSE_SECONDS)
