"""Runs the whole example in one process: the auth app and the engine
(in-memory mesh). Ports: websocket 6790, API 6789, auth app 8000, each
settable (``--ws-port``, ``--api-port``, ``--auth-port``; ``--help``).
A port in use or a bad setting is one line on stderr and exit status 1."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from auth_app import make_app  # noqa: E402

from connmix_py import ConfigError, Engine, StartupError, load_settings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
log = logging.getLogger("message-center")
# The option that sets what an engine error names.
FLAGS = {"engine.servers[0].port": "--ws-port", "engine.apiServer.port": "--api-port"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The message-centre example: auth app and engine in one process.")
    parser.add_argument("--ws-port", type=int, default=6790, help="websocket clients (default 6790)")
    parser.add_argument("--api-port", type=int, default=6789, help="the engine's API (default 6789)")
    parser.add_argument("--auth-port", type=int, default=8000, help="the example's auth app (default 8000)")
    return parser.parse_args(argv)


async def start_auth_app(args: argparse.Namespace) -> web.AppRunner:
    runner = web.AppRunner(make_app(engine_api=f"http://127.0.0.1:{args.api_port}"), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", args.auth_port).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"auth app: cannot listen on 127.0.0.1:{args.auth_port} (--auth-port): "
                           f"{exc.strerror or exc}") from None
    return runner


def engine_for(args: argparse.Namespace) -> Engine:
    settings = load_settings(os.path.join(HERE, "connmix.yaml"))
    settings.api_server.port = args.api_port
    server = settings.servers[0]
    server.port = args.ws_port
    # entry.websocket.lua reads where the auth app is from this option.
    server.options["auth_url"] = f"http://127.0.0.1:{args.auth_port}/websocket_auth"
    return Engine(settings)


async def main(args: argparse.Namespace) -> int:
    try:
        runner = await start_auth_app(args)
        engine = engine_for(args)
        try:
            await engine.start()
        except StartupError:
            await runner.cleanup()
            raise
    except (ConfigError, StartupError) as exc:
        for problem in str(exc).splitlines():  # one line each, as the connmix command prints them
            flag = next((flag for key, flag in FLAGS.items() if problem.startswith(key)), None)
            log.error("%s%s", problem, f" ({flag})" if flag else "")
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    path = engine.settings.servers[0].path
    log.info("message centre running: ws://127.0.0.1:%d%s, API http://127.0.0.1:%d, auth app http://127.0.0.1:%d"
             " (Ctrl-C stops)", engine.server_port(), path, engine.api_port, runner.addresses[0][1])
    await stop.wait()
    await engine.stop()
    await runner.cleanup()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers are in place
        sys.exit(130)
