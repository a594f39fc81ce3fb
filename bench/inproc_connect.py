"""Connect in-process: the engine's Python side of a connect, without sockets.

Starts the engine on bench.yaml.in's settings (bench-entry.lua, ports chosen
by the kernel), then drives N WebSocketSessions over stand-in transports:
the upgrade head, then a subscribe frame, as the shared bench's `connect`
scenario does, with every connection kept open. Prints the CPU time per
connect and what the garbage collector took of it, per generation:

    .venv/bin/python bench/inproc_connect.py [N] [--paced] [--threshold=A,B,C] [--profile]

--paced applies the CLI's collector pacing (connmix_py/collector.py);
--threshold sets gc thresholds; --profile prints cProfile's top functions.
The kernel's side (accept, reads, writes) is not in these numbers.
"""
from __future__ import annotations

import asyncio
import cProfile
import gc
import os
import pstats
import sys
import tempfile
import time

import uvloop

from connmix_py.collector import pace_for_connections
from connmix_py.engine import Engine
from connmix_py.servers.websocket import WebSocketSession
from stand_in import StandInTransport, masked_text_frame

HERE = os.path.dirname(os.path.abspath(__file__))
HEAD = (b"GET /message-center HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n")


def config_file(folder: str) -> str:
    with open(os.path.join(HERE, "bench.yaml.in")) as template:
        text = template.read()
    text = (text.replace("@API@", "0").replace("@WS@", "0")
            .replace("logs/connmix.log", os.path.join(folder, "connmix.log"))
            .replace("entry: bench-entry.lua", f"entry: {os.path.join(HERE, 'bench-entry.lua')}"))
    path = os.path.join(folder, "connmix.yaml")
    with open(path, "w") as out:
        out.write(text)
    return path


class CollectorClock:
    """Collections and seconds per generation, from gc.callbacks."""

    def __init__(self) -> None:
        self.runs = [[0, 0.0] for _ in range(3)]
        self.started = 0.0
        gc.callbacks.append(self.observe)

    def observe(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            run = self.runs[info["generation"]]
            run[0] += 1
            run[1] += time.perf_counter() - self.started


async def main(n: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        engine = Engine(config_file(folder))
        await engine.start()
        server = engine.servers[0]
        frames = [masked_text_frame(b'{"op":"subscribe","channel":"user:%d"}' % i) for i in range(n)]
        kept = []
        clock = CollectorClock()
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        started = time.process_time()
        for frame in frames:
            transport = StandInTransport()
            session = WebSocketSession(server)
            session.connection_made(transport)
            session.data_received(HEAD)
            session.data_received(frame)
            kept.append((session, transport))
        elapsed = time.process_time() - started
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        last = kept[-1][1]
        assert last.first and last.first.startswith(b"HTTP/1.1 101")
        assert last.last and last.last.endswith(b'{"result":true}')
        print(f"{n} connects: {elapsed / n * 1e6:.1f} µs CPU each; collector per connect, by generation: "
              + ", ".join(f"gen{g} {runs}x {seconds / n * 1e6:.1f} µs" for g, (runs, seconds) in enumerate(clock.runs))
              + f"; gc thresholds {gc.get_threshold()}")
        for session, _ in kept:
            session.connection_lost(None)
        await asyncio.sleep(0.1)
        await engine.stop()


if __name__ == "__main__":
    count = next((int(a) for a in sys.argv[1:] if a.isdigit()), 20000)
    if "--paced" in sys.argv:
        pace_for_connections()
    for arg in sys.argv[1:]:
        if arg.startswith("--threshold="):
            gc.set_threshold(*map(int, arg.split("=", 1)[1].split(",")))
    uvloop.run(main(count, "--profile" in sys.argv))
