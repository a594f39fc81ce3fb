"""`connmix dev|single|engine|check -f connmix.yaml`, `connmix --version`."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from importlib import metadata

from . import logs
from .config import ConfigError, load_settings
from .checker import find_problems
from .engine import Engine, StartupError

log = logging.getLogger("connmix")
DISTRIBUTION = "connmix-py"  # the name in pyproject.toml
NO_BROKER = "engine.broker: connmix engine needs a broker, e.g. broker: redis://127.0.0.1:6379/0"


def installed_version() -> str:
    """The version pip installed (package metadata), not a copy in the code."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="connmix", description="CONNMIX-compatible long-connection gateway")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("dev", "run everything in one process with debug logging"),
                       ("single", "run everything in one process with production logging"),
                       ("engine", "run a grid node (needs engine.broker) with production logging"),
                       ("check", "validate the yaml and compile every entry script")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("-f", "--file", default="connmix.yaml", help="configuration file")
    return parser


def check(path: str) -> int:
    """Print each problem as one line with file (and line); 1 if any."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    problems = find_problems(settings)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{path}: ok ({len(settings.servers)} server(s))")
    for i, server in enumerate(settings.servers):
        # A relative entry may be found in two places (config.resolve_entry).
        print(f"engine.servers[{i}].entry: {server.entry}")
    return 0


async def serve(path: str, mode: str) -> int:
    try:
        settings = load_settings(path)
        if mode == "engine" and settings.broker is None:
            raise ConfigError(NO_BROKER)
        logs.apply(settings, mode)
        engine = Engine(settings)
        if mode != "dev":  # dev logs at debug whatever the yaml says
            engine.on_logging_level = lambda level: logging.getLogger().setLevel(logs.LEVELS[level])
        await engine.start()
    except (ConfigError, StartupError) as exc:
        for problem in str(exc).splitlines():  # one problem per line, each with its own prefix
            log.error("%s", problem)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("connmix-py running (%s mode); Ctrl-C stops", mode)
    await stop.wait()
    log.info("stopping")
    await engine.stop()
    return 0


def run(coro) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup_console()
    if args.command == "check":
        return check(args.file)
    try:
        return run(serve(args.file, args.command))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers are in place
        return 130


if __name__ == "__main__":
    sys.exit(main())
