"""One Lua state per server entry: loading the script and running its callbacks.

Each callback runs as a Lua coroutine. A waiting call (mix.http.request,
conn:wait_context_value) yields a Python handle; ``_drive`` awaits it on the
event loop and resumes the coroutine with the result, so a waiting callback
never blocks other connections. Callers keep per-connection order by
awaiting one callback before starting the next.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from time import perf_counter
from typing import Any, Awaitable, Callable

import aiohttp
from lupa import luajit21 as lupa_rt

from ..config import LuaVmSettings, ServerSettings
from ..conn import CLOSE_INTERNAL_ERROR, LUA_ERROR_REASON, Connection, EncodeError
from ..queue import Queues
from ..redis_pools import RedisPools
from .convert import make_to_lua
from .memory import HEADROOM, VALUE_OVERHEAD, LuaMemory, LuaMemoryFull, value_size
from .mixlib import codec as codec_lib
from .mixlib import conn as conn_lib
from .mixlib import http as http_lib
from .mixlib import json as json_lib
from .mixlib import log as log_lib
from .mixlib import mesh as mesh_lib
from .mixlib import queue as queue_lib
from .mixlib import redis as redis_lib
from .mixlib import server as server_lib
from .mixlib import socket as socket_lib
from .mixlib import php as php_lib
from .mixlib import strings as strings_lib
from .mixlib import urls as urls_lib

log = logging.getLogger("connmix.lua")

PRELUDE = os.path.join(os.path.dirname(__file__), "prelude.lua")
# Multi-tenant deployments: no processes, files, C code or loading of code by scripts.
SANDBOX = os.path.join(os.path.dirname(__file__), "sandbox.lua")
GUARDS = os.path.join(os.path.dirname(__file__), "guards.lua")
# Bridge functions whose one result is an error (nil on success): they put
# nothing big into Lua, and the memory guard's (nil, err) would read as success.
RETURN_ONLY_AN_ERROR = frozenset({"send", "close", "subscribe", "unsubscribe", "set_context",
                                  "set_context_value", "clear_buffer", "mesh_send"})
# Not wrapped in the memory guard: those above, and json_decode, which most
# scripts call on every message and which makes the guard's check itself.
UNGUARDED = RETURN_ONLY_AN_ERROR | {"json_decode"}
# Where require looks, under the entry script's folder (the sandbox's loader
# too): CONNMIX's layout keeps helpers in lua/utils/ beside the entry in lua/
# and requires them by bare name (laravel-chat: require("prettyprint")).
MODULE_PATHS = ("?.lua", "?/init.lua", "utils/?.lua")
# What a waiting call returns to the script once a stop ended the waits.
WAITS_ENDED = (None, b"engine shutting down")
BRIDGES = (log_lib, json_lib, strings_lib, http_lib, mesh_lib, server_lib, conn_lib, queue_lib, redis_lib,
           codec_lib, php_lib, urls_lib, socket_lib)


class LuaLoadError(Exception):
    """The entry script cannot be loaded; the message names file and line."""


def _deny_attributes(obj: Any, name: Any, is_setting: bool) -> Any:
    # Scripts get Python functions only to call them, never to look inside.
    raise AttributeError("access to Python attributes is not allowed")


def file_times(paths: list[str]) -> dict[str, int]:
    """Modification times of files (what hot update watches); missing -> -1."""
    times = {}
    for path in paths:
        try:
            times[path] = os.stat(path).st_mtime_ns
        except OSError:
            times[path] = -1
    return times


def _run_file(runtime: lupa_rt.LuaRuntime, path: str, *args: Any) -> Any:
    """Run one of the engine's own Lua files with arguments; its results."""
    with open(path, "rb") as f:
        chunk = runtime.execute(b"return load(...)", f.read(), b"@" + path.encode())
    return chunk(*args)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# What LuaVM.feed returns when it needs the whole unframed input again.
RESYNC = "resync"


class LuaVM:
    def __init__(self, settings: ServerSettings, hub, mesh,
                 http_session: Callable[[], aiohttp.ClientSession],
                 luavm: LuaVmSettings | None = None, queues: Queues | None = None,
                 redis: RedisPools | None = None) -> None:
        self.settings = settings
        self.luavm = luavm or LuaVmSettings()
        self.queues = queues or Queues(self.luavm.queue_topic_size, self.luavm.queue_max_topics)
        self.redis = redis or RedisPools(self.luavm.redis)
        self.name = os.path.basename(settings.entry)
        self.hub = hub
        self.mesh = mesh
        # This script's Lua errors, budget stops and time per callback run.
        self.counters = hub.metrics.script(self.name)
        self.http_session = http_session
        self.runtime: lupa_rt.LuaRuntime | None = None
        self.memory: LuaMemory = None  # type: ignore[assignment]  # set by the first load()
        self._memory_used: Callable[[], int] = lambda: 0
        self._message_room = 0  # bytes in use past which call_message asks _no_room
        self.to_lua: Callable[[Any], Any] = lambda v: v
        # to_lua without its room check, for a caller that checked a bound of the size itself.
        self.to_lua_unchecked: Callable[[Any], Any] = lambda v: v
        # Waiting calls in flight, and whether a stop ended them all (end_all_waits).
        self._waits: set[asyncio.Future] = set()
        self._waits_ended = False
        self._current: Connection | None = None
        self._batch: Connection | None = None  # the connection whose messages call_messages runs
        self._sources: dict[str, int] = {}

    # -- loading ---------------------------------------------------------------

    def load(self) -> None:
        """Create a state and run the entry script in it; on success it
        replaces the current state. Raises LuaLoadError (the old state, if
        any, keeps serving)."""
        previous = (self.runtime, self.to_lua, self.to_lua_unchecked, self.memory)
        sources = file_times([self.settings.entry])
        try:
            functions = self._build_state()
        except LuaLoadError:
            self.runtime, self.to_lua, self.to_lua_unchecked, self.memory = previous
            raise
        self._memory_used = self.memory.runtime.get_memory_used
        self._message_room = self.memory.cap - HEADROOM - VALUE_OVERHEAD
        # Callbacks waiting in the old state finish there: _drive keeps the
        # continue function of the state it started in.
        (self._dispatch, self._dispatch_message, self._dispatch_handshake, self._continue, self._forget,
         self._dispatch_input, self._encode, self._loaded, self._rawget, self._dispatch_messages,
         self._stop_batch) = functions
        sources.update(file_times(self._required_files()))
        self._sources = sources

    def _required_files(self) -> list[str]:
        """The files behind the modules the script required from its folder."""
        folder = os.path.dirname(self.settings.entry)
        files = []
        for name in self._loaded.keys():
            if type(name) is not bytes:
                continue
            relative = name.decode("utf-8", "replace").replace(".", "/")
            for pattern in MODULE_PATHS:
                path = os.path.join(folder, pattern.replace("?", relative))
                if os.path.isfile(path):
                    files.append(path)
                    break
        return files

    def _build_state(self) -> tuple:
        budget_mb = self.luavm.memory_budget
        memory = LuaMemory(budget_mb)
        # The hard cap: an allocation past it fails in Lua, even inside a C function.
        runtime = lupa_rt.LuaRuntime(encoding=None, unpack_returned_tuples=True,
                                     register_eval=False, register_builtins=False,
                                     attribute_filter=_deny_attributes, max_memory=memory.cap)
        memory.bind(runtime)
        self.runtime, self.memory = runtime, memory
        to_lua = make_to_lua(runtime.table_from)

        def checked_to_lua(value: Any) -> Any:
            memory.make_room(value)
            return to_lua(value)
        self.to_lua, self.to_lua_unchecked = checked_to_lua, to_lua
        bridge: dict[str, Any] = {}
        for module in BRIDGES:
            bridge.update(module.bridge(self))
        py = runtime.table_from({k.encode(): v if k in UNGUARDED else memory.guard(k, v)
                                 for k, v in bridge.items()})
        folder = os.path.dirname(self.settings.entry)
        package = runtime.globals().package
        package.path = "".join(f"{folder}/{pattern};" for pattern in MODULE_PATHS).encode() + package.path
        (dispatch, dispatch_message, dispatch_handshake, cont, forget, load_chunk, set_budgets,
         dispatch_input, encode, dispatch_messages, stop_batch) = _run_file(runtime, PRELUDE, py)
        self.guards = _run_file(runtime, GUARDS)
        self.guards.set_memory_budget(budget_mb)
        # Budgets rely on a count hook, which JIT-compiled loops never call.
        runtime.execute(b"if jit then jit.off(); jit.flush() end")
        set_budgets(self.luavm.cpu_budget, budget_mb, memory.cap // 1024, time.monotonic)
        # Taken before the script runs: Python reads the script's tables raw,
        # so no metamethod of the script's runs outside a callback's budgets.
        loadfile, modules, rawget = runtime.globals().loadfile, package.loaded, runtime.globals().rawget
        if self.luavm.sandbox:
            _run_file(runtime, SANDBOX, folder.encode())
        loaded = loadfile(self.settings.entry.encode())
        if type(loaded) is tuple:  # nil, message
            raise LuaLoadError(_text(loaded[1]))
        outcome = load_chunk(loaded)
        if outcome[0] == b"wait":
            raise LuaLoadError(f"{self.settings.entry}: waiting calls (mix.http.request ...) "
                               "cannot run while the script loads; call them in callbacks")
        if outcome[0] == b"error":
            raise LuaLoadError(_text(outcome[1]))
        return (dispatch, dispatch_message, dispatch_handshake, cont, forget, dispatch_input, encode, modules, rawget,
                dispatch_messages, stop_batch)

    def reload_if_changed(self) -> bool:
        """Hot update: load the scripts again if a .lua file beside the entry
        changed. A broken new version is logged and the old one keeps serving."""
        sources = file_times(list(self._sources))
        if sources == self._sources:
            return False
        self._sources = sources  # do not retry the same broken files every tick
        try:
            self.load()
        except LuaLoadError as exc:
            log.error("%s: hot update rejected, the previous version keeps serving: %s", self.name, exc)
            return False
        log.info("%s: hot update loaded", self.name)
        return True

    # -- calling callbacks -------------------------------------------------------

    @property
    def current(self) -> Connection | None:
        """The connection whose callback is running (None while the entry loads)."""
        return self._current

    def lookup(self, cid: bytes) -> Connection | None:
        current = self._current
        if current is not None and current.id_bytes == cid:
            return current
        return self.hub.get(cid.decode("ascii", "replace")) if type(cid) is bytes else None

    def _no_room(self, conn: Connection, name: str, size: int) -> bool:
        """True (the connection closed, logged) when the event's values,
        ``size`` bytes once in Lua, do not fit in Lua memory: the callback is not run."""
        if self.memory.fits(size):
            return False
        log.error("%s: %s not run for client %s: Lua memory budget used up", self.name, name, conn.client_id)
        self.counters.budget_stops += 1
        if name != "on_close":
            conn.close(CLOSE_INTERNAL_ERROR, "lua error: Lua memory budget used up")
        return True

    def call_message(self, conn: Connection, binary: bool, data: bytes) -> Awaitable | None:
        """Run on_message; None when it finished at once, else an awaitable."""
        # memory.fits' first test inline (the usual answer, on every message); _no_room decides otherwise.
        if (self._memory_used() + len(data) > self._message_room
                and self._no_room(conn, "on_message", len(data) + VALUE_OVERHEAD)):
            return None
        self._current = conn
        started = perf_counter()
        outcome = self._dispatch_message(conn.id_bytes, b"binary" if binary else b"text", data)
        self.counters.observe(perf_counter() - started)
        if outcome == b"done":  # the usual end, nothing to report
            self._current = None
            return None
        return self._settle(conn, "on_message", outcome)

    def call_messages(self, conn: Connection, messages: list[bytes], size: int) -> tuple[int, Awaitable | None]:
        """on_message for several messages of one connection in one call into
        Lua: ``messages`` is kind, data, kind, data ... (b"text" or b"binary"),
        ``size`` the bytes of their data. Each runs as call_message runs it, in
        order, until one does not end at once (an error, a wait: settled as
        call_message settles it) or the connection starts closing. Returns how
        many messages were handled, and the awaitable of the last one when it waits."""
        count = len(messages) >> 1
        # call_message's first memory test, for all of them at once: they all go into Lua now.
        if self._memory_used() + size + VALUE_OVERHEAD * count > self._message_room:
            return 1, self.call_message(conn, messages[0] == b"binary", messages[1])
        self._current = self._batch = conn
        started = perf_counter()
        try:
            outcome = self._dispatch_messages(conn.id_bytes, self._message_room + size, *messages)
        finally:
            self._batch = None
        elapsed = perf_counter() - started
        if outcome == b"done":  # the usual end: every callback ended
            self._current = None
            self.counters.observe_many(elapsed, count)
            return count, None
        ran, state = int(outcome[0]), outcome[1]
        self.counters.observe_many(elapsed, ran)
        if state == b"room":  # the next one did not pass the first memory test: call_message decides
            return ran + 1, self.call_message(conn, messages[2 * ran] == b"binary", messages[2 * ran + 1])
        if state == b"done":  # the connection started closing
            self._current = None
            return ran, None
        return ran, self._settle(conn, "on_message", outcome[1:])

    def connection_closing(self, conn: Connection) -> None:
        """``conn`` started closing: a call_messages running for it gives no
        more of its messages to on_message (the one running ends first)."""
        if conn is self._batch:
            self._stop_batch()

    def call(self, conn: Connection, name: str, *args: Any) -> Awaitable | None:
        """Run a callback by name; same contract as call_message."""
        if self._no_room(conn, name, sum(value_size(a) for a in args)):
            return None
        self._current = conn
        started = perf_counter()
        outcome = self._dispatch(conn.id_bytes, name.encode(), *args)
        self.counters.observe(perf_counter() - started)
        return self._settle(conn, name, outcome)

    async def call_for_result(self, conn: Connection, name: str, *args: Any) -> Any:
        """Run a callback and return its (first) return value; None on error."""
        if self._no_room(conn, name, sum(value_size(a) for a in args)):
            return None
        return await self._result(conn, name, self._dispatch, conn.id_bytes, name.encode(), *args)

    async def call_handshake(self, conn: Connection, headers: dict[str, str], server: dict[str, str]) -> Any:
        """on_handshake(client_id, headers, server)'s first result, as
        call_for_result. The tables are built in Lua from their keys and values
        (cheaper than two tables from Python), and only when the script has an
        on_handshake; the call into Lua is made and counted either way. Raises
        LuaMemoryFull, before any Lua runs, when they would not fit."""
        strings: list[Any] = [len(headers)]
        for table in (headers, server):
            for key, value in table.items():
                strings += (key.encode(), value.encode())
        pairs = strings[1:]
        if not self.memory.fits(sum(map(len, pairs)) + VALUE_OVERHEAD * (len(pairs) + 2)):
            raise LuaMemoryFull("Lua memory budget used up: no room for the handshake's tables")
        return await self._result(conn, "on_handshake", self._dispatch_handshake, conn.id_bytes, *strings)

    async def _result(self, conn: Connection, name: str, dispatch: Callable, *args: Any) -> Any:
        self._current = conn
        started = perf_counter()
        outcome = dispatch(*args)
        self.counters.observe(perf_counter() - started)
        if type(outcome) is tuple and outcome[0] == b"wait":
            outcome = await self._drive(conn, outcome[1], outcome[2])
        return self._finish(conn, name, outcome)

    def _settle(self, conn: Connection, name: str, outcome: Any) -> Awaitable | None:
        if type(outcome) is tuple and outcome[0] == b"wait":
            return self._drive_and_finish(conn, name, outcome[1], outcome[2])
        self._finish(conn, name, outcome)
        return None

    async def _drive_and_finish(self, conn: Connection, name: str, co: Any, handle: Any) -> Any:
        return self._finish(conn, name, await self._drive(conn, co, handle))

    async def _drive(self, conn: Connection, co: Any, handle: Any) -> Any:
        cont = self._continue  # the state this callback started in, even after a hot update
        while True:
            try:
                result = await self._wait(handle)
            except Exception as exc:  # a bug of ours: give the script an error value
                log.exception("waiting call failed")
                result = (None, f"internal error: {exc}".encode())
            if not self.memory.fits(sum(value_size(v) for v in result)):
                result = (None, b"Lua memory budget used up: the result does not fit")
            self._current = conn
            started = perf_counter()
            outcome = cont(co, conn.id_bytes, *result)
            self.counters.observe(perf_counter() - started)
            if type(outcome) is tuple and outcome[0] == b"wait":
                co, handle = outcome[1], outcome[2]
                continue
            return outcome

    def _finish(self, conn: Connection, name: str, outcome: Any) -> Any:
        self._current = None
        if outcome == b"missing":
            return None
        state, value = outcome[0], outcome[1] if len(outcome) > 1 else None
        if state == b"done":
            return value
        if len(outcome) > 2 and outcome[2]:  # the socket callback that failed
            name = _text(outcome[2])
        message = _text(value)
        log.error("%s: %s failed for client %s: %s", self.name, name, conn.client_id, message)
        self.counters.failed(message)
        if name != "on_close":
            conn.close(CLOSE_INTERNAL_ERROR, LUA_ERROR_REASON)
        return None

    # -- socket protocol (SPEC 3, "socket protocol callbacks") -------------------

    def feed(self, conn: Connection, data: bytes, held: int) -> int | str | None | Awaitable:
        """Frame a socket connection's buffered input: protocol_input, then
        protocol_decode and on_message for each complete packet, in order.
        ``data`` is the input received since the last feed, ``held`` how many
        unframed bytes the Lua side kept from before (0: ``data`` is all).
        Returns how many bytes were framed (the caller drops them), -1 when
        protocol_input asked to disconnect, None after an error (logged, the
        connection closing); or an awaitable of that when on_message waits;
        or RESYNC when the Lua side does not hold ``held`` bytes (a new state
        after a hot update): feed everything again with held 0."""
        if self._no_room(conn, "protocol_input", len(data) + VALUE_OVERHEAD):
            return None
        self._current = conn
        started = perf_counter()
        outcome = self._dispatch_input(conn.id_bytes, data, held)
        self.counters.observe(perf_counter() - started)
        if outcome == b"resync":
            self._current = None
            return RESYNC
        if type(outcome) is tuple and outcome[0] == b"wait":
            return self._drive_and_finish(conn, "on_message", outcome[1], outcome[2])
        return self._finish(conn, "protocol_input", outcome)

    def encode(self, conn: Connection | None, payload: bytes) -> bytes:
        """protocol_encode(payload[, conn]): the wire bytes. ``conn`` is None
        for a publish (encoded once for all). Raises EncodeError (logged)."""
        if not self.memory.fits(len(payload)):
            self.counters.budget_stops += 1
            raise EncodeError("protocol_encode: Lua memory budget used up")
        started = perf_counter()
        outcome = self._encode(conn.id_bytes if conn is not None else None, payload)
        self.counters.observe(perf_counter() - started)
        if outcome == b"missing":
            return payload
        if outcome[0] == b"done":
            return outcome[1]
        message = _text(outcome[1])
        target = f"client {conn.client_id}" if conn is not None else "a publish"
        log.error("%s: protocol_encode failed for %s: %s", self.name, target, message)
        self.counters.failed(message)
        first = message.splitlines()[0] if message else "failed"
        raise EncodeError(first if first.startswith("protocol_encode") else f"protocol_encode: {first}")

    def has(self, name: str) -> bool:
        assert self.runtime is not None  # called after a load
        return self._rawget(self.runtime.globals(), name.encode()) is not None

    # -- connection lifetime -----------------------------------------------------

    def forget(self, conn: Connection) -> None:
        """Drop the Lua-side state of a closed connection and end its waits."""
        if self.memory.fits(0):  # else its id cannot even be passed: its state stays
            self._forget(conn.id_bytes)
        conn.end_waits()

    async def _wait(self, handle: Callable[[], Awaitable[Any]]) -> Any:
        """A waiting call's result; WAITS_ENDED once end_all_waits ran."""
        if self._waits_ended:
            return WAITS_ENDED
        wait = asyncio.ensure_future(handle())
        self._waits.add(wait)
        try:
            await asyncio.wait((wait,))
        finally:
            self._waits.discard(wait)
            wait.cancel()  # when our caller was cancelled; a no-op once done
        return WAITS_ENDED if wait.cancelled() else wait.result()

    def end_all_waits(self) -> None:
        """Stopping: every waiting call (mix.http.request, redis, ...), now
        and later, returns nil, "engine shutting down" at once."""
        self._waits_ended = True
        for wait in list(self._waits):
            wait.cancel()
