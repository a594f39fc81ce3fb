"""Limits every listening port shares: the process's file descriptors, how
their running out is reported, and log lines that a flood must not multiply.

Out of descriptors, asyncio's accept() fails (reported through the loop's
exception handler, see log_accept_failures) while uvloop (libuv) accepts and
drops the new connections without telling anyone; so every accepted socket
is also checked against the limit (watch_descriptors) to warn before that.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from typing import Any, Callable

log = logging.getLogger("connmix.limits")

# What asyncio's accept loop reports when accept() fails for lack of a
# resource (it then pauses that listener for a second and retries).
_ACCEPT_FAILED = "socket.accept() out of system resource"
# Where the soft limit stops when the hard limit is "unlimited" (Linux's default fs.nr_open).
_UNLIMITED_CAP = 1024 * 1024
# Descriptors left when accepted connections start warning that the limit is near.
FD_HEADROOM = 32
# The soft limit as raise_fd_limit left it: read once, not once per connection.
_soft_limit: int | None = None


class RateLimitedLog:
    """At most one line per ``interval`` seconds per key; a line says how
    many were left out since the one before."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[Any, float] = {}
        self._left_out: dict[Any, int] = {}

    def warning(self, key: Any, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return
        self._last[key] = now
        left_out = self._left_out.pop(key, 0)
        if left_out:
            message += f" ({left_out} more like this in the last {now - last:.0f}s)"
        self.logger.warning(message, *args)


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit: each connection
    holds one. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
    log.info("open files limit: %d", soft)
    global _soft_limit
    _soft_limit = soft
    return soft


_descriptor_lines = RateLimitedLog(log)


def watch_descriptors(transport: asyncio.BaseTransport) -> None:
    """Warn (once a second at most) when an accepted connection's descriptor
    is near the open files limit. Descriptors are given out lowest first, so
    descriptor n means at least n + 1 are open."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    fd = sock.fileno()
    if fd < FD_HEADROOM:
        return
    soft = _soft_limit if _soft_limit is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and fd >= soft - FD_HEADROOM:
        port = _address(sock.getsockname())
        _descriptor_lines.warning("near", "open files nearly exhausted: a connection on %s got "
                                  "descriptor %d of limit %d; at the limit new connections are "
                                  "refused or dropped", port, fd, soft)


def log_accept_failures(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Report accept() failures (EMFILE: out of file descriptors) in one line
    per listening port per second, without a traceback; everything else goes
    to the handler there was before. Returns the function undoing this."""
    before = loop.get_exception_handler()
    lines = RateLimitedLog(log)

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if context.get("message") != _ACCEPT_FAILED or not isinstance(exc, OSError):
            if before is not None:
                before(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        sock = context.get("socket")
        where = _address(sock.getsockname()) if sock is not None else "?"
        code = errno.errorcode.get(exc.errno, str(exc.errno))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        lines.warning(where, "cannot accept connections on %s: %s (%s, open files limit %d); "
                      "new clients wait in the backlog", where, exc.strerror, code, soft)

    loop.set_exception_handler(handler)

    def undo() -> None:
        if loop.get_exception_handler() is handler:
            loop.set_exception_handler(before)
    return undo


def _address(sockname: Any) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return f"{sockname[0]}:{sockname[1]}"
    return str(sockname)
