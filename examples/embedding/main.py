"""Embedding the engine in a Python program: start it, publish from Python,
stop it on Ctrl-C or SIGTERM. Run from the repository root:

    .venv/bin/python examples/embedding/main.py [--ws-port 6790] [--api-port 6789]

then connect a websocket client to ws://127.0.0.1:6790/ws and send "news":
it gets "tick 1", "tick 2"... every second.

What can go wrong, and what is raised:
- Engine(path) reads the yaml: ConfigError (each problem a line, naming the key);
  Engine(parse_settings({...})): parse_settings raises the same ConfigError.
- await engine.start(): StartupError, one line (a port in use, an entry script
  that does not compile, an unwritable log file).
- await engine.publish / engine.send (coroutines): ValueError for a payload over
  maxOutboundMessageSize, or text that is not UTF-8 for a websocket client.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from connmix_py import ConfigError, Engine, StartupError, parse_settings

HERE = os.path.dirname(os.path.abspath(__file__))
log = logging.getLogger("embedding")


def settings(ws_port: int, api_port: int):
    return parse_settings({"engine": {
        "apiServer": {"port": api_port, "bind": "127.0.0.1"},
        "servers": [{"port": ws_port, "bind": "127.0.0.1", "protocol": "websocket",
                     "options": [{"name": "path", "value": "/ws"}], "entry": "entry.websocket.lua"}],
    }}, base_dir=HERE)


def stop_on_signals() -> asyncio.Event:
    """An event Ctrl-C (SIGINT) or SIGTERM sets, instead of a KeyboardInterrupt traceback."""
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    return stop


async def main(ws_port: int, api_port: int) -> int:
    try:
        engine = Engine(settings(ws_port, api_port))
        await engine.start()
    except (ConfigError, StartupError) as exc:  # the message says what and where: no traceback
        log.error("%s", str(exc).replace("\n", "; "))
        return 1
    stop = stop_on_signals()
    log.info("engine running: ws://127.0.0.1:%d/ws, API http://127.0.0.1:%d (Ctrl-C stops)",
             engine.server_port(), engine.api_port)
    tick = 0
    while not stop.is_set():
        tick += 1
        delivered, failed = await engine.publish("news", f"tick {tick}")
        log.debug("tick %d: %d delivered, %d failed", tick, delivered, failed)
        try:
            await asyncio.wait_for(stop.wait(), timeout=1)
        except asyncio.TimeoutError:
            pass
    log.info("stopping")
    await engine.stop()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ws-port", type=int, default=6790)
    parser.add_argument("--api-port", type=int, default=6789)
    args = parser.parse_args()
    # The engine leaves logging to the program: here, INFO and up to the console.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(args.ws_port, args.api_port)))
