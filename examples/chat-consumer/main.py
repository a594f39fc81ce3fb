"""Runs the whole example in one process: the engine (websocket on :6790,
API on :6789) and the worker that answers the chat."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import worker  # noqa: E402

from connmix_py import Engine  # noqa: E402


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = Engine(os.path.join(HERE, "connmix.yaml"))
    await engine.start()
    consuming = asyncio.create_task(worker.main(f"http://127.0.0.1:{engine.api_port}"))
    logging.info("chat ready: ws://127.0.0.1:%d/chat", engine.server_port())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    consuming.cancel()
    await asyncio.gather(consuming, return_exceptions=True)
    await engine.stop()


if __name__ == "__main__":
    asyncio.run(main())
