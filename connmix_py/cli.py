"""`connmix dev|single|engine|center|check -f connmix.yaml`, `connmix --version`."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from importlib import metadata

from . import logs
from .config import ConfigError, Settings, load_settings
from .checker import find_problems
from .collector import pace_for_connections
from .engine import Engine, StartupError
from .grid import workers
from .grid.center import Center, CenterError

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
        if name in ("single", "engine"):
            _add_worker_options(cmd)
    center = sub.add_parser("center", help="run only the center's apiServer: the grid's nodes from the broker")
    center.add_argument("-f", "--file", default="connmix.yaml", help="configuration file")
    center.add_argument("-p", "--processes", metavar="N",
                        help="accepted for CONNMIX's start scripts; the center runs as one process")
    return parser


def _add_worker_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("-p", "--processes", metavar="N",
                     help="run N worker processes sharing the ports (0 or auto: one per CPU); "
                          "more than one needs engine.broker")
    # How the -p parent starts each worker; not for people.
    cmd.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    cmd.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)
    cmd.add_argument("--report-fd", type=int, help=argparse.SUPPRESS)


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


def load_for(path: str, mode: str) -> Settings:
    """The yaml for a command; raises ConfigError (engine without a broker too)."""
    settings = load_settings(path)
    if mode == "engine" and settings.broker is None:
        raise ConfigError(NO_BROKER)
    return settings


def supervise(path: str, mode: str, processes: str) -> int:
    """-p: check the yaml here (a mistake is one line, before any worker
    starts), then keep the workers running until stopped."""
    try:
        count = workers.worker_count(processes)
        settings = load_for(path, mode)
        logs.apply(settings, mode)
    except (workers.WorkerCountError, ConfigError) as exc:
        for problem in str(exc).splitlines():
            log.error("%s", problem)
        return 1
    if count > 1 and settings.broker is None:
        log.error("-p %d: worker processes need engine.broker (each has a mesh of its own), "
                  "e.g. broker: redis://127.0.0.1:6379/0", count)
        return 1
    if count > 1 and (unshared := workers.any_port(settings)) is not None:
        log.error("%s: 0 (any free port) would give each of the -p %d workers a different port; "
                  "give a port number", unshared, count)
        return 1
    return run(workers.Supervisor(count, workers.worker_argv(mode, path, os.getpid())).run())


async def serve(path: str, mode: str, worker: int | None = None, report_fd: int | None = None) -> int:
    """Run one engine until SIGINT/SIGTERM; ``worker``: as -p's worker of that
    index, reporting its start to its parent on report_fd."""
    pace_for_connections()
    try:
        settings = load_for(path, mode)
        if worker is not None:
            settings = workers.worker_settings(settings, worker)
        logs.apply(settings, mode)
        if worker is not None:
            workers.label_lines(worker, logs.FORMAT)
        engine = Engine(settings, reuse_port=worker is not None, private_api=worker is not None)
        if mode != "dev":  # dev logs at debug whatever the yaml says
            engine.on_logging_level = lambda level: logging.getLogger().setLevel(logs.LEVELS[level])
        await engine.start()
    except (ConfigError, StartupError) as exc:
        if report_fd is not None:  # the parent logs it, once for all its workers
            workers.report_start(report_fd, str(exc))
            return workers.EXIT_CANNOT_START
        for problem in str(exc).splitlines():  # one problem per line, each with its own prefix
            log.error("%s", problem)
        return 1 if worker is None else workers.EXIT_CANNOT_START
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("connmix-py running (%s mode); Ctrl-C stops", mode)
    if report_fd is not None:
        workers.report_start(report_fd)
    await stop.wait()
    log.info("stopping")
    await engine.stop()
    return 0


async def serve_center(path: str, processes: str | None = None) -> int:
    """``connmix center``: discovery for backends configured with a center's address."""
    try:
        settings = load_settings(path, require_server=False)
        logs.apply(settings, "center")
        if processes is not None:
            log.warning("connmix center -p %s is ignored: the center is one light process "
                        "(its work is a registry read per discovery request)", processes)
        center = Center(settings, settings.broker)
        await center.start()
    except (ConfigError, CenterError) as exc:
        for problem in str(exc).splitlines():
            log.error("%s", problem)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("connmix-py center running; Ctrl-C stops")
    await stop.wait()
    log.info("stopping")
    await center.stop()
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
    if args.command == "center":
        try:
            return run(serve_center(args.file, args.processes))
        except KeyboardInterrupt:
            return 130
    worker = getattr(args, "worker", None)
    if worker is None and getattr(args, "processes", None) is not None:
        return supervise(args.file, args.command, args.processes)
    if worker is not None and not workers.die_with_supervisor(args.supervisor):
        return 1  # its parent is gone already
    try:
        return run(serve(args.file, args.command, worker, getattr(args, "report_fd", None)))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers are in place
        return 130


if __name__ == "__main__":
    sys.exit(main())
