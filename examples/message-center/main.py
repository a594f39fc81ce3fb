"""Runs the whole example in one process: the auth app on :8000 and the
engine (in-memory mesh) on :6790 (websocket) and :6789 (API)."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from auth_app import make_app  # noqa: E402

from connmix_py import Engine  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


async def main() -> None:
    logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 8000).start()
    engine = Engine(os.path.join(HERE, "connmix.yaml"))
    await engine.start()
    logging.info("message centre ready: ws://127.0.0.1:6790/message-center, API http://127.0.0.1:6789, auth app http://127.0.0.1:8000")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await engine.stop()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
