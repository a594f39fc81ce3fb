"""The embedding API: one Engine builds, starts and stops everything from one
configuration. The CLI and the tests use it the same way:

    engine = Engine("connmix.yaml")
    await engine.start()
    await engine.publish("user:1001", '{"msg":"hi"}')
    await engine.stop()
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Callable

import aiohttp
from aiohttp import web

from .api import access, discovery, request_log
from .api.front import ApiFront
from .api import http as http_api
from .api import ws as ws_api
from .config import ConfigError, Settings, check_entries, load_settings
from .console import add_routes as add_console_routes
from .grid.directory import Directory
from .grid.node import GridNode
from .grid.registry import advertised_host
from .grid.transport import BrokerDown
from .hot_config import ConfigWatcher, RestartNotes, restart_keys, watchable
from .hub import Hub
from .ids import ClientIds
from .lua.vm import LuaLoadError, LuaVM
from .mesh import Mesh
from .metrics import Metrics
from .queue import Queues
from .redis_pools import RedisPools
from .servers.http_limits import HttpLimits, limited_runner
from .servers.limits import log_accept_failures, raise_fd_limit
from .servers.socket import SocketServer
from .servers.websocket import WebSocketServer

SERVER_KINDS = {"websocket": WebSocketServer, "socket": SocketServer}

log = logging.getLogger("connmix.engine")
# How often a stop looks whether every connection has finished (seconds).
CLOSED_POLL = 0.02


class StartupError(Exception):
    """The engine cannot start; the message is one clear line."""


class Engine:
    def __init__(self, config: str | Settings, node_id: int = 1, *, reuse_port: bool = False,
                 private_api: bool = False) -> None:
        """reuse_port: listen on the yaml's ports with SO_REUSEPORT, so several
        processes (the -p workers) share them. private_api: also serve the
        apiServer on a port of this process's own (same bind, chosen by the
        kernel); that is the address the node registers, so a backend's
        /ws/v1 session reaches this process and not whichever one the shared
        port picks."""
        self.settings = load_settings(config) if isinstance(config, str) else config
        # One metrics object: the hub hands it to the servers and Lua VMs.
        self.metrics = Metrics()
        self.hub = Hub(self.settings.max_outbound_message_size, self.metrics)
        # With engine.broker this engine is a grid node: its id comes from the
        # broker at start (node_id is then only a placeholder).
        self.grid = (GridNode(self.settings.broker, self.hub, self._describe)
                     if self.settings.broker is not None else None)
        self.mesh = Mesh(self.hub, self.grid.broker if self.grid is not None else None)
        if self.grid is not None:
            self.grid.broker.mesh = self.mesh
        self.ids = ClientIds(node_id)
        luavm = self.settings.luavm
        self.queues = Queues(luavm.queue_topic_size, luavm.queue_max_topics, self.metrics)
        self.metrics.watch(self.hub, self.queues)
        self.redis = RedisPools(luavm.redis)
        self.servers: list[WebSocketServer | SocketServer] = []
        self.vms: list[LuaVM] = []
        self.api_port = self.settings.api_server.port
        self.reuse_port = reuse_port
        self.private_api = private_api
        self.private_api_port: int | None = None  # once listening, with private_api
        self._api_runner: web.AppRunner | None = None
        self._api_front: ApiFront | None = None
        self._http: aiohttp.ClientSession | None = None
        self._watchers: list[asyncio.Task] = []
        self._undo_accept_logging: Callable[[], None] | None = None
        self._api_sessions: ws_api.ApiSessions | None = None
        # Hot configuration; the CLI sets on_logging_level where the yaml's level rules.
        self._config_watcher = (ConfigWatcher(self.settings.source, self.settings.config_reload_interval,
                                              self.apply_settings) if watchable(self.settings) else None)
        self._restart_notes = RestartNotes()
        self.on_logging_level: Callable[[str], None] | None = None
        self.stopping = False
        self._advertised: str | None = None  # the host in this node's registration
        # /readyz asks each: None when ready, else why not.
        self.readiness_checks: list[Callable[[], str | None]] = [self._listening]
        # A broker outage does not make a node unready: every node loses the
        # same broker at once, so unready would send a load balancer nowhere,
        # while each node still serves its own clients and local publishes.
        # /healthz and connmix_broker_connected show it instead.
        if self.grid is not None:
            self.metrics.broker_state = self.grid.state

    # -- lifetime -----------------------------------------------------------------

    def load_scripts(self) -> list[LuaVM]:
        """Create one Lua VM per server and load its entry (raises on error)."""
        check_entries(self.settings)
        vms = []
        for server in self.settings.servers:
            vm = LuaVM(server, self.hub, self.mesh, self._http_session, self.settings.luavm,
                       self.queues, self.redis)
            vm.load()
            vms.append(vm)
        return vms

    async def start(self) -> None:
        """Load every script, then open every port. Raises StartupError."""
        try:
            self.vms = self.load_scripts()
        except (ConfigError, LuaLoadError) as exc:
            raise StartupError(str(exc)) from None
        if self.grid is not None:
            try:
                self.ids = ClientIds(await self.grid.join())
            except BrokerDown as exc:
                raise StartupError(str(exc)) from None
        raise_fd_limit()
        self._undo_accept_logging = log_accept_failures(asyncio.get_running_loop())
        where = "engine.apiServer"  # names the key in a "cannot listen" error
        try:
            for i, (server, vm) in enumerate(zip(self.settings.servers, self.vms, strict=True)):
                where = f"engine.servers[{i}]"
                listener = SERVER_KINDS[server.protocol](server, vm, self.hub, self.ids.next,
                                                         reuse_port=self.reuse_port)
                await listener.start()
                self.servers.append(listener)
                path = server.path if server.protocol == "websocket" else ""
                log.info("%s server on %s:%d%s, entry %s", server.protocol, server.bind,
                         listener.port, path, server.entry)
            where = "engine.apiServer"
            await self._start_api()
            for server, vm in zip(self.settings.servers, self.vms, strict=True):
                if server.byte_code_expires > 0:
                    self._watchers.append(asyncio.create_task(self._watch(vm, server.byte_code_expires)))
            if self._config_watcher is not None:
                self._watchers.append(asyncio.create_task(self._config_watcher.run()))
            if self.grid is not None:
                await self.grid.announce()
        except OSError as exc:
            await self.stop()
            raise StartupError(f"{where}.port: cannot listen: {exc.strerror or exc}") from None

    async def _start_api(self) -> None:
        api = self.settings.api_server
        # A lambda, not the users: a reload that replaces settings.access
        # applies to the next request.
        app = web.Application(client_max_size=16 * 1024 * 1024,
                              middlewares=[request_log.log_request,
                                           access.middleware(lambda: self.settings.access)])
        http_api.add_routes(app, self.mesh, self.stats, self.metrics, self.not_ready,
                            self.grid.health if self.grid is not None else None)
        # A grid node lists every live node of the grid, read from the registry.
        directory = (Directory(self.grid.registry.client, self.grid.url.display, log_outages=False)
                     if self.grid is not None else None)
        discovery.add_routes(app, api.bind, lambda: self.api_port, directory)
        add_console_routes(app, self.hub, self.metrics, self.ids.node_id)
        self._api_sessions = ws_api.add_routes(app, self.mesh, self.queues, self.ids.node_id)
        limits = HttpLimits(api.handshake_timeout, api.max_connections, api.body_timeout)
        self._api_runner = limited_runner(app, limits)
        await self._api_runner.setup()
        # The front answers publish and send itself and hands aiohttp every other request.
        self._api_front = ApiFront(self._api_runner, self.mesh, limits, lambda: self.settings.access)
        self.api_port = await self._api_front.listen(api.bind, api.port, reuse_port=self.reuse_port)
        log.info("api server on %s:%d", api.bind, self.api_port)
        if self.private_api:
            self.private_api_port = await self._api_front.listen(api.bind, 0)
            log.info("api server of this process alone on %s:%d", api.bind, self.private_api_port)
        if not self.settings.access.users and not access.is_loopback(api.bind):
            log.warning("api server on %s:%d has no access.users: anyone who can reach it may publish, "
                        "send and consume; add users or bind it to 127.0.0.1", api.bind, self.api_port)

    @staticmethod
    async def _watch(vm: LuaVM, every: float) -> None:
        """Hot update: check the scripts for changes every `every` seconds."""
        while True:
            await asyncio.sleep(every)
            vm.reload_if_changed()

    async def apply_settings(self, new: Settings) -> None:
        """A reloaded configuration: access and logging.level apply now (the
        /ws/v1 sessions of a revoked user end); any other change is logged,
        once, as waiting for a restart."""
        running = self.settings
        for key in self._restart_notes.new(restart_keys(running, new)):
            log.warning("%s: %s changed; it applies at the next restart", running.source, key)
        # One assignment: a request sees the old settings or the new, never a mix.
        self.settings = dataclasses.replace(
            running, access=new.access, logging=dataclasses.replace(running.logging, level=new.logging.level))
        if new.logging.level != running.logging.level:
            if self.on_logging_level is not None:
                self.on_logging_level(new.logging.level)
            log.info("%s: logging.level is now %s", running.source, new.logging.level)
        if new.access != running.access:
            log.info("%s: access reloaded, %d user(s)", running.source, len(new.access.users))
            if self._api_sessions is not None:
                await self._api_sessions.end_revoked(new.access)

    async def stop(self) -> None:
        """Stop accepting, close every client with 1001 (each on_close runs),
        give callbacks still waiting on mix.http.request or redis up to
        engine.shutdownGrace seconds, then end their waits; then release
        everything else."""
        self.stopping = True
        if self.grid is not None:  # first: the grid stops listing this node
            await self.grid.leave()
        for watcher in self._watchers:
            watcher.cancel()
        self._watchers.clear()
        for server in self.servers:
            await server.stop_accepting()
        for server in self.servers:
            server.close_clients()
        if not await self._all_closed(self.settings.shutdown_grace):
            log.info("stopping: %d connection(s) not finished after engine.shutdownGrace (%gs): "
                     "ending their waits", len(self.hub.conns), self.settings.shutdown_grace)
        for vm in self.vms:
            vm.end_all_waits()
        for server in self.servers:
            await server.stop()
        self.servers.clear()
        if self._api_front is not None:
            self._api_front.close()
            self._api_front = None
        if self._api_runner is not None:
            await self._api_runner.cleanup()
            self._api_runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.redis.close()
        if self.grid is not None:  # last: on_close callbacks may still publish
            await self.grid.close()
            self.grid = None
        if self._undo_accept_logging is not None:
            self._undo_accept_logging()
            self._undo_accept_logging = None

    async def _all_closed(self, within: float) -> bool:
        """Wait until every connection has finished (its on_close ran); False
        when some have not after ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.hub.conns:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(CLOSED_POLL)
        return True

    def _describe(self) -> dict:
        """This node's registration record (grid/registry.py adds id, times, pid)."""
        from .cli import installed_version  # cli imports this module
        assert self.settings.broker is not None
        if self._advertised is None:
            self._advertised = advertised_host(self.settings.api_server.bind, self.settings.broker)
        host = self._advertised
        port = self.registered_api_port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        servers = []
        for server in self.servers:
            entry: dict = {"protocol": server.settings.protocol, "port": server.port}
            if server.settings.protocol == "websocket":
                entry["path"] = server.settings.path
            servers.append(entry)
        return {"api_server": address, "host": address, "servers": servers,
                "connections": len(self.hub.conns), "version": installed_version()}

    # -- probes ------------------------------------------------------------------

    def _listening(self) -> str | None:
        if len(self.servers) < len(self.settings.servers):
            return "not every server is listening yet"
        for i, server in enumerate(self.servers):
            if not server.listening():
                return f"engine.servers[{i}] is not listening"
        return None

    def not_ready(self) -> list[str]:
        """Why the engine should get no traffic now; empty when ready."""
        if self.stopping:
            return ["stopping"]
        return [reason for check in self.readiness_checks if (reason := check()) is not None]

    def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            # No cookie jar: cookies one script's request got must never go
            # out with another connection's request (mix.http.request is Go's
            # jar-less http.Client).
            self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self._http

    # -- pushing from Python -----------------------------------------------------------

    async def publish(self, channel: str, data: str | bytes, type: str = "text") -> tuple[int, int]:
        """Deliver to every subscriber of channel: (delivered, failed).
        Raises ValueError (conn.PayloadError) when the payload is over
        engine.maxOutboundMessageSize or is text that is not UTF-8."""
        payload = data.encode() if isinstance(data, str) else data
        return await self.mesh.publish(channel, payload, type == "binary")

    async def send(self, client_id: str, data: str | bytes, type: str = "text") -> bool:
        """Deliver to one client; False when it is unknown or closed.
        Raises ValueError like publish."""
        payload = data.encode() if isinstance(data, str) else data
        return await self.mesh.send(client_id, payload, type == "binary")

    def stats(self) -> dict[str, int]:
        return self.hub.stats()

    @property
    def registered_api_port(self) -> int:
        """The apiServer port this node registers: its private one when it has one."""
        return self.private_api_port if self.private_api_port is not None else self.api_port

    def server_port(self, index: int = 0) -> int:
        return self.servers[index].port
