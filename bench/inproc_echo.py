#!/usr/bin/env python3
"""The echo scenario in one process, without sockets: server CPU per echo and where it goes.

A real LuaVM runs bench/bench-entry.lua; a real WebSocketSession (upgraded
through its own handshake code) gets masked echo frames, 8 per
``data_received`` as the shared load generator's window sends them, and
writes its replies to a stand-in transport that keeps nothing. What is left
out is the kernel and the event loop, which no change here touches.

    .venv/bin/python bench/inproc_echo.py                 # us per echo, and the breakdown
    .venv/bin/python bench/inproc_echo.py --only whole    # just the whole path
    .venv/bin/python bench/inproc_echo.py --profile       # cProfile of the whole path, top 30
    .venv/bin/py-spy record -o echo.svg -- .venv/bin/python bench/inproc_echo.py --only whole --rounds 200000

The breakdown runs the same path in layers, each adding one part to the one
before; the difference between two rows is what that part costs:

    frames        FrameReader.feed of a read (ws_codec), per frame
    empty         + call_messages of each read's messages, one call into Lua per read,
                  with an empty on_message (metrics, a slice and a msg table per message)
    websocket     + `msg.type` check and mix.websocket()
    json_decode   + mix.json_decode of the message
    send          + conn:send (bench-entry.lua as it is), still without the session
    whole         data_received: frames, hold, per-frame checks, on_message, release

Timings are this process's CPU time, best of ``--repeat`` runs (the
machine is shared; the least disturbed run is the closest to the code's
own cost).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import os
import pstats
import sys
import tempfile
import time
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from connmix_py.config import ServerSettings  # noqa: E402
from connmix_py.hub import Hub  # noqa: E402
from connmix_py.lua.vm import LuaVM  # noqa: E402
from connmix_py.mesh import Mesh  # noqa: E402
from connmix_py.servers.websocket import WebSocketServer, WebSocketSession  # noqa: E402
from connmix_py.servers.ws_codec import FrameReader  # noqa: E402
from stand_in import StandInTransport, masked_text_frame  # noqa: E402

ENTRY = os.path.join(REPO, "bench", "bench-entry.lua")
WINDOW = 8  # frames per read, as the load generator's window
# The load generator's message (../shared/bench/loadgen.py).
MESSAGE = '{"op":"echo","data":"%08d %020d"}'
# bench-entry.lua's on_message cut down, one layer more per script (see the docstring).
LAYERS = {
    "empty": "function on_message(msg) end",
    "websocket": """function on_message(msg)
    if msg.type ~= "text" then return end
    local conn = mix.websocket()
end""",
    "json_decode": """local json_decode = mix.json_decode
function on_message(msg)
    if msg.type ~= "text" then return end
    local conn = mix.websocket()
    local req, err = json_decode(msg.data)
    if err ~= nil or type(req) ~= "table" then return end
    local op = req.op
end""",
}


def reads(count: int) -> list[bytes]:
    """``count`` reads of WINDOW echo frames each, numbered like the load generator's."""
    out, seq = [], 0
    for _ in range(count):
        chunk = b""
        for _ in range(WINDOW):
            chunk += masked_text_frame((MESSAGE % (seq % 100_000_000, time.monotonic_ns() % 10 ** 20)).encode())
            seq += 1
        out.append(chunk)
    return out


def make_vm(entry: str) -> LuaVM:
    hub = Hub()
    vm = LuaVM(ServerSettings(entry=entry, options={"path": "/"}), hub, Mesh(hub), lambda: None)
    vm.load()
    return vm


def open_session(vm: LuaVM) -> tuple[WebSocketSession, StandInTransport]:
    """A session upgraded by its own handshake code, on a stand-in transport."""
    ids = iter(range(1, 1 << 62))
    server = WebSocketServer(vm.settings, vm, vm.hub, lambda: str(next(ids)))
    session = WebSocketSession(server)
    transport = StandInTransport()
    session.connection_made(transport)  # type: ignore[arg-type]
    key = base64.b64encode(os.urandom(16))
    session.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
    assert session.reader is not None, "the upgrade did not complete"
    return session, transport


def best_us_per_echo(run: Callable[[], None], echoes: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()  # CPU time: another process's turns on the core are not counted
        run()
        best = min(best, time.process_time() - started)
    return best / echoes * 1e6


def layer_runs(data: list[bytes], folder: str) -> dict[str, tuple[Callable[[], None], Any]]:
    """name -> (a function running the whole input through that layer, its VM)."""
    # Each read's messages as the session hands them to call_messages: kind, data ... and their bytes.
    batches = []
    for chunk in data:
        payloads = [payload for _, payload in FrameReader(0).feed(chunk)]
        batches.append(([part for payload in payloads for part in (b"text", payload)], sum(map(len, payloads))))
    runs: dict[str, tuple[Callable[[], None], Any]] = {}

    def frames() -> None:
        reader = FrameReader(1 << 20)
        for chunk in data:
            reader.feed(chunk)
    runs["frames"] = (frames, None)
    for name, source in [*LAYERS.items(), ("send", None)]:
        entry = ENTRY
        if source is not None:
            entry = os.path.join(folder, f"{name}.lua")
            with open(entry, "w") as f:
                f.write(source)
        vm = make_vm(entry)
        session, _ = open_session(vm)
        conn, call_messages = session.conn, vm.call_messages
        assert conn is not None

        def messages(call_messages: Any = call_messages, conn: Any = conn) -> None:
            for batch, size in batches:
                conn.hold()  # as the session does around a read: replies are joined, not written
                call_messages(conn, batch, size)
                conn.release()
        runs[name] = (messages, vm)
    vm = make_vm(ENTRY)
    session, transport = open_session(vm)

    def whole(session: WebSocketSession = session) -> None:
        received = session.data_received
        for chunk in data:
            received(chunk)
    runs["whole"] = (whole, (vm, transport))
    return runs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=2000, help="reads of 8 frames per run (default 2000)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per layer; the best counts (default 7)")
    parser.add_argument("--rounds", type=int, default=0, help="with --only: run this many times (for py-spy)")
    parser.add_argument("--only", choices=["frames", *LAYERS, "send", "whole"], help="measure one layer")
    parser.add_argument("--profile", action="store_true", help="cProfile the whole path instead")
    args = parser.parse_args()
    data = reads(args.reads)
    echoes = args.reads * WINDOW
    with tempfile.TemporaryDirectory() as folder:
        runs = layer_runs(data, folder)
        if args.profile:
            run = runs["whole"][0]
            run()  # warm up
            profiler = cProfile.Profile()
            profiler.runcall(run)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            return
        names = [args.only] if args.only else list(runs)
        for _ in range(args.rounds):
            runs[names[0]][0]()
        previous = 0.0
        for name in names:
            run, _ = runs[name]
            run()  # warm up: runners, caches
            us = best_us_per_echo(run, echoes, args.repeat)
            layered = name not in ("frames", "whole") and not args.only
            step = f"(+{us - previous:5.2f})" if layered else ""
            print(f"{name:12} {us:6.2f} us per echo {step}")
            previous = us if layered else 0.0
        whole = runs["whole"][1]
        if whole is not None and "whole" in names:
            vm, transport = whole
            assert transport.written >= echoes * (len(MESSAGE) + 2), "the replies did not all go out"


if __name__ == "__main__":
    asyncio.run(main())
