"""`-p N`: a parent process keeping N worker processes running, each a full
grid node listening on the yaml's ports with SO_REUSEPORT (the kernel spreads
new connections over them).

The parent runs no engine. It starts each worker as
``python -m connmix_py <command> -f FILE --worker I --supervisor PID --report-fd FD``,
restarts one that dies (waiting longer after each quick death, so a crash
loop does not spin), forwards SIGTERM/SIGINT and exits when every worker has
stopped: 0 when all stopped cleanly, 1 otherwise.

A worker reports its start on FD, a pipe to the parent: READY once it
serves, or why it cannot start (a user mistake: port in use, a script that
does not load), then it exits with EXIT_CANNOT_START. The parent logs that
reason once, whichever worker sent it first (N workers would each say the
same), and when no worker of that slot ever served, stops them all.
"""
from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable

from ..config import Settings

log = logging.getLogger("connmix.workers")

# A worker's exit status for "cannot start" (sysexits' EX_CONFIG).
EXIT_CANNOT_START = 78
# What a worker writes on its report pipe once it serves (anything else: why it cannot start).
READY = b"ready"
# A worker that ran this long (seconds) before dying was not crash-looping:
# its next restart is immediate again.
STABLE_AFTER = 10.0
# Restart delays: doubling from FIRST_DELAY after each quick death, up to MAX_DELAY.
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
# Linux prctl option: a signal for this process when its parent dies.
PR_SET_PDEATHSIG = 1


class WorkerCountError(ValueError):
    """A bad -p value; the message is one line."""


def worker_count(text: str) -> int:
    """-p's value: a positive number, or 0 / auto for every CPU."""
    if text == "auto":
        return os.cpu_count() or 1
    try:
        count = int(text)
    except ValueError:
        raise WorkerCountError(f"-p: expected a number of processes or auto, got {text!r}") from None
    if count < 0:
        raise WorkerCountError(f"-p: expected a number of processes or auto, got {text!r}")
    return count or os.cpu_count() or 1


def backoff(quick_deaths: int) -> float:
    """Seconds before a restart, after that many deaths in a row that came quickly."""
    if quick_deaths <= 0:
        return 0.0
    return min(MAX_DELAY, FIRST_DELAY * 2 ** (quick_deaths - 1))


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Keeps ``count`` workers running; ``argv(index, report_fd)`` is worker
    index's command line."""

    def __init__(self, count: int, argv: Callable[[int, int], list[str]]) -> None:
        self.count = count
        self.argv = argv
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.failed = False  # a worker that did not stop cleanly, or could not start
        self._stop = asyncio.Event()

    async def run(self) -> int:
        """Until every worker has stopped; the exit status for the command."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signalled, sig)
        log.info("starting %d worker process(es); Ctrl-C stops", self.count)
        await asyncio.gather(*(self._keep(index) for index in range(1, self.count + 1)))
        log.info("every worker has stopped")
        return 1 if self.failed else 0

    def _signalled(self, sig: int) -> None:
        if not self.stopping:
            self.stop(sig)
            return
        # A second Ctrl-C or SIGTERM: do not wait for shutdownGrace.
        log.warning("signalled again: killing %d worker(s) still stopping", len(self.procs))
        self._signal_all(signal.SIGKILL)

    def _signal_all(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Pass sig to every worker; none is restarted after this."""
        if not self.stopping:
            log.info("stopping %d worker(s)", len(self.procs))
        self.stopping = True
        self._stop.set()
        self._signal_all(sig)

    async def _keep(self, index: int) -> None:
        """Run worker index, and again each time it dies, until stop()."""
        loop = asyncio.get_running_loop()
        quick_deaths = 0
        served = False  # has a worker of this slot ever served?
        while not self.stopping:
            started = loop.time()
            proc, reported = await self._start(index)
            report = await reported
            served = served or report == READY
            code = await proc.wait()
            del self.procs[index]
            if self.stopping:
                if code != 0 and not self.failed:  # after a failed start, the others' ends say nothing new
                    log.warning("worker %d (pid %d) %s while stopping", index, proc.pid, describe_exit(code))
                    self.failed = True
                return
            if report and report != READY:
                for line in report.decode(errors="replace").splitlines():
                    log.error("worker %d: %s", index, line)
                if not served:  # every other worker would fail the same way
                    self.failed = True
                    self.stop()
                    return
            quick_deaths = quick_deaths + 1 if loop.time() - started < STABLE_AFTER else 0
            delay = backoff(quick_deaths)
            log.warning("worker %d (pid %d) %s; starting it again%s", index, proc.pid, describe_exit(code),
                        f" in {delay:g} s" if delay else "")
            if delay:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass

    async def _start(self, index: int) -> tuple[asyncio.subprocess.Process, asyncio.Future[bytes]]:
        """Worker index, and its report: READY, why it cannot start, or b"" (it died first)."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(*self.argv(index, write_fd), pass_fds=(write_fd,),
                                                        stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the worker holds it now: end of file = it exited
        self.procs[index] = proc
        if self.stopping:  # stop() came while it was being started
            proc.send_signal(signal.SIGTERM)
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(read_fd, "rb"))

        async def report() -> bytes:
            try:
                return await reader.read()  # the worker closes the pipe after its report (or dies)
            finally:
                transport.close()
        return proc, asyncio.ensure_future(report())


def any_port(settings: Settings) -> str | None:
    """The first key whose port is 0 (any free one): workers cannot share it."""
    if settings.api_server.port == 0:
        return "engine.apiServer.port"
    for i, server in enumerate(settings.servers):
        if server.port == 0:
            return f"engine.servers[{i}].port"
    return None


def worker_argv(command: str, path: str, supervisor_pid: int) -> Callable[[int, int], list[str]]:
    """The command line that runs worker index of this command."""
    def argv(index: int, report_fd: int) -> list[str]:
        return [sys.executable, "-m", "connmix_py", command, "-f", path,
                "--worker", str(index), "--supervisor", str(supervisor_pid), "--report-fd", str(report_fd)]
    return argv


# -- inside a worker -----------------------------------------------------------------


def die_with_supervisor(supervisor_pid: int) -> bool:
    """Get SIGTERM when the parent dies (Linux), so a SIGKILLed parent leaves
    no worker holding the ports. False when it is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans go on until stopped
        pass
    return os.getppid() == supervisor_pid


def report_start(report_fd: int, problem: str | None = None) -> None:
    """Tell the parent this worker serves (problem None) or why it cannot start."""
    try:
        os.write(report_fd, READY if problem is None else problem.encode())
        os.close(report_fd)
    except OSError:  # the parent is gone: its death signal stops this worker
        pass


def worker_settings(settings: Settings, index: int) -> Settings:
    """A worker logs into a file of its own (logs/connmix.log becomes
    logs/connmix.worker1.log): processes rotating one file at midnight would
    delete each other's rotated days."""
    root, ext = os.path.splitext(settings.logging.filename)
    filename = f"{root}.worker{index}{ext}"
    return dataclasses.replace(settings, logging=dataclasses.replace(settings.logging, filename=filename))


class _WorkerIndex(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index  # a field of JSON lines; text lines show it (label_lines)
        return True


def label_lines(index: int, text_format: str) -> None:
    """Every line this worker logs names it: ``worker 2`` in text, a
    ``worker`` field in JSON."""
    labelled = text_format.replace("%(name)s", "worker %(worker)s %(name)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerIndex(index))
        if type(handler.formatter) is logging.Formatter:  # the text format (JSON lines carry the field)
            handler.setFormatter(logging.Formatter(labelled))

