"""Connection: one client's id, context, subscriptions and bounded send queue.

Frames are written straight to the transport, or held and written together
(hold/release: the replies to one read, the publishes of one turn of the
event loop); the send queue is what is held plus the transport's write
buffer. It is bounded twice: by size (``max_send_queue`` bytes,
not counting the largest frame queued: one big frame is not slowness) and by
time (no progress for ``write_timeout`` seconds, progress meaning the client
took everything queued or at least ``max_send_queue`` bytes). A connection
over either bound is aborted as a slow client, so publishers are never
slowed and memory stays bounded.

What goes on the wire is the connection kind's business: each connection
has an ``encoder`` turning a payload into its wire bytes (a websocket frame,
or the socket server's ``protocol_encode``). Connections sharing an encoder
get the same bytes for the same payload, so a publish encodes once per
encoder, not once per subscriber. On a socket server the script frames its
own ``conn:send`` bytes (``script_frames``): those skip the encoder.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable, Optional

from . import frames
from .logs import ConnectionLog

log = logging.getLogger("connmix.conn")

# Close codes, in one table.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_TEXT = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
# 1011's reason, to the client and on_close: no path, no message (a secret may be in
# it); the whole error is in the log.
LUA_ERROR_REASON = "lua error"

# Frames a connection may hold before its upgrade completes (sent on open).
_MAX_PENDING_FRAMES = 1024
# Bytes held back (hold()) before they are written anyway.
_HOLD_LIMIT = 64 * 1024
# Queued frames at least this big are remembered, so the largest one queued
# can be left out of the send-queue bound; smaller ones count in full.
_BIG_FRAME = 64 * 1024

# (payload, binary, target connection or None for a publish) -> wire bytes;
# raises EncodeError when the payload cannot be encoded (the send fails).
Encoder = Callable[[bytes, bool, Optional["Connection"]], bytes]


class EncodeError(Exception):
    """A payload cannot be encoded for a connection (e.g. protocol_encode failed)."""


class PayloadError(ValueError):
    """The payload itself is refused (too big, or a text payload that is not
    UTF-8): the caller's mistake, reported to it and never sent to anyone."""


class Connection:
    # The fan-out reads only the first six: declared first, they share one cache line.
    __slots__ = (
        "held", "last_turn", "writer", "sent_total", "held_size", "held_cap",
        "client_id", "id_bytes", "server", "remote_addr", "context", "channels",
        "transport", "max_send_queue", "write_timeout", "read_timeout", "read_since",
        "closing", "close_code", "close_err", "frames_sent", "send_errors", "blocked_since",
        "block_mark", "big_frames", "encoder", "script_frames", "session", "_logger", "_log", "aborted", "_pending",
        "_closer", "_loop", "_waiters",
    )

    def __init__(self, client_id: str, server: Any, remote_addr: str,
                 max_send_queue: int, write_timeout: float, read_timeout: float,
                 encoder: Encoder = frames.websocket_wire, session: Any = None,
                 script_frames: bool = False, logger: logging.Logger = log) -> None:
        self.client_id = client_id
        self.id_bytes = client_id.encode()
        self.server = server
        self.remote_addr = remote_addr
        self.context: dict[str, Any] = {}
        self.channels: set[str] = set()
        self.transport: asyncio.Transport | None = None
        # The transport while a frame may go straight to it (open, not closing,
        # not held); None sends every frame through write_frame's checks.
        self.writer: asyncio.Transport | None = None
        self.max_send_queue = max_send_queue
        self.write_timeout = write_timeout
        self.read_timeout = read_timeout
        self._loop = asyncio.get_running_loop()
        # When the server began waiting for the next frame; None while one is
        # being handled, so a slow callback never counts as an idle client.
        self.read_since: float | None = self._loop.time()
        self.closing = False
        self.close_code: int | None = None
        self.close_err: str | None = None
        self.sent_total = 0
        # Messages sent to this connection alone, and those that failed
        # (publishes are counted by the hub once per publish); with
        # sent_total, the metrics' traffic out.
        self.frames_sent = 0
        self.send_errors = 0
        self.blocked_since: float | None = None
        self.block_mark = 0
        # (start, end) offsets in sent_total of big frames still queued; made
        # at the first big frame (a deque is ~760 bytes, most clients never need one).
        self.big_frames: deque[tuple[int, int]] | None = None
        self.encoder = encoder
        # conn:send writes the script's bytes as given (socket servers: CONNMIX's
        # protocols/websocket.lua sends its 101 reply and its frames that way).
        self.script_frames = script_frames
        # The server's per-connection state (a socket connection's input buffer).
        self.session = session
        # The server's logger; ``log`` adds this client's id and address to every
        # line (made at the first use: most connections never log a line).
        self._logger = logger
        self._log: ConnectionLog | None = None
        self.aborted = False  # dropped without a close (no close code was sent)
        self._pending: list[bytes] | None = []
        self._closer: Callable[[int], None] | None = None
        # context key -> wait_context_value calls waiting for it (None: none ever waited).
        self._waiters: dict[str, list[asyncio.Future]] | None = None
        # Frames held back (hold/release) and their size; past held_cap bytes
        # they are written at once (the send-queue bound, or _HOLD_LIMIT, is near).
        self.held: list[bytes] | None = None
        # Hub.turn of the last publish to this connection (its later ones that turn are held).
        self.last_turn = -1
        self.held_size = 0
        self.held_cap = 0

    @property
    def log(self) -> ConnectionLog:
        if self._log is None:
            self._log = ConnectionLog(self._logger, self.client_id, self.remote_addr)
        return self._log

    def __repr__(self) -> str:
        return f"<Connection {self.client_id} {self.remote_addr}>"

    # -- opening and closing --------------------------------------------------

    def open(self, transport: asyncio.Transport, closer: Callable[[int], None]) -> None:
        """The upgrade is done: frames queued before it go out now."""
        self.transport = transport
        self._closer = closer
        pending, self._pending = self._pending, None
        self._update_writer()
        for frame in pending or ():
            self.write_frame(frame)

    def close(self, code: int = CLOSE_NORMAL, err: str | None = None) -> None:
        """Close after the frames already queued; later sends fail."""
        if self.closing:
            return
        self.release()  # the frames before the close go first
        self.closing = True
        self.writer = None
        self.close_code = code
        if err is not None and self.close_err is None:
            self.close_err = err
        if self._closer is not None:
            self._closer(code)

    def abort(self, err: str) -> None:
        """Drop the connection now, without flushing (slow or dead client)."""
        self.log.warning("closing: %s", err)
        if self.close_err is None:
            self.close_err = err
        self.closing = True
        self.writer = None
        self.held = None
        self.aborted = True
        if self.transport is not None:
            self.transport.abort()

    def mark_closed(self, err: str | None) -> None:
        """The socket is gone; remember why for on_close."""
        self.closing = True
        self.writer = None
        self.held = None
        if self.close_err is None:
            self.close_err = err

    def log_closed(self, code: int | None) -> None:
        """The connection's last line: the close code (1006: the connection
        was lost, no close was exchanged) and the reason on_close gets."""
        if not self._logger.isEnabledFor(logging.DEBUG):
            return
        if code is None or self.aborted:
            code = 1006
        self.log.debug("closed: code %d, %s", code, self.close_err or "clean")

    # -- context -------------------------------------------------------------------
    # One place for a script's conn:set_context* and a backend's conn.call, so
    # both wake the same wait_context_value calls.

    def set_context(self, context: dict[str, Any]) -> None:
        self.context = context
        self._context_changed()

    def set_context_value(self, key: str, value: Any) -> None:
        """Set one key; None (Lua's nil) removes it."""
        if value is None:
            self.context.pop(key, None)
        else:
            self.context[key] = value
        self._context_changed()

    def _context_changed(self) -> None:
        """Wake wait_context_value calls whose key is now set."""
        waiters = self._waiters
        if not waiters:
            return
        for key in [k for k in waiters if self.context.get(k) is not None]:
            value = self.context[key]
            for waiter in waiters.pop(key):
                if not waiter.done():
                    waiter.set_result(value)

    async def wait_context_value(self, key: str, timeout: float | None) -> Any:
        """The key's value once it is set; None after timeout seconds (None or
        0: no limit) or when the connection closes."""
        value = self.context.get(key)
        if value is not None or self.closing:
            return value
        waiter = self._loop.create_future()
        if self._waiters is None:
            self._waiters = {}
        self._waiters.setdefault(key, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, timeout) if timeout else await waiter
        except asyncio.TimeoutError:
            return None
        finally:
            waiting = self._waiters.get(key) if self._waiters else None
            if waiting and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._waiters[key]

    def end_waits(self) -> None:
        """The connection closed: its wait_context_value calls return None."""
        waiters, self._waiters = self._waiters, None
        for waiting in (waiters or {}).values():
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_result(None)

    # -- sending -----------------------------------------------------------------

    def send(self, data: bytes, binary: bool = False) -> bool:
        """Encode for this connection and queue; False if that fails."""
        return self.deliver(data, binary) is None

    def deliver(self, data: bytes, binary: bool = False, from_script: bool = False) -> str | None:
        """Encode for this connection and queue, counted; None when queued,
        else why not. ``from_script``: conn:send, whose bytes go out as given
        when the script frames its own (``script_frames``). Raises
        PayloadError when the encoder refuses the payload itself. (On every
        conn:send: one method, no helper calls on the way to write_frame.)"""
        if self.closing:
            return self._not_sent("connection closed")
        if from_script and self.script_frames:
            wire = data
        else:
            try:
                wire = self.encoder(data, binary, self)
            except EncodeError as exc:
                return self._not_sent(str(exc))
        if not self.write_frame(wire):
            return self._not_sent("connection closed")
        self.frames_sent += 1
        return None

    def _not_sent(self, why: str) -> str:
        self.send_errors += 1
        return why

    def hold(self) -> bool:
        """Hold frames back until release(), so that they leave in one write
        (one system call instead of one each): the replies to the frames of
        one read, or the publishes of one turn of the event loop. False when
        the connection is not open, is closing or is held already."""
        transport = self.writer
        if transport is None or transport.is_closing():
            return False
        self.held = []
        self.held_size = 0
        # Below the cap nothing can cross the send-queue bound: the transport's
        # buffer only shrinks while nothing is written to it.
        self.held_cap = min(self.max_send_queue - transport.get_write_buffer_size(), _HOLD_LIMIT)
        self.writer = None
        return True

    def release(self) -> bool:
        """Write what is held, in order; False if the client was dropped
        (or is gone)."""
        held = self.held
        if held is None:
            return True
        self.held = None
        self._update_writer()
        if not held:
            return True
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(held[0] if len(held) == 1 else b"".join(held))
        queued = transport.get_write_buffer_size()
        # A big frame is always the last one held (it is released at once).
        return not queued or self.queue_grew(len(held[-1]), queued)

    def over_cap(self) -> bool:
        """What is held reached the cap (the send-queue bound is near, or
        _HOLD_LIMIT, or the last frame is big): write it now and judge it as a
        plain write is judged, then hold again; False if the client was dropped."""
        if not self.release():
            return False
        self.hold()
        return True

    def _update_writer(self) -> None:
        """Let frames go straight to the transport again if nothing stands in the way."""
        self.writer = self.transport if not self.closing and self.held is None else None

    def write_frame(self, frame: bytes) -> bool:
        """Queue encoded wire bytes; False if the connection cannot take it.
        (Hub.publish inlines the first two branches for its fan-out loop.)"""
        transport = self.writer
        if transport is not None and not transport.is_closing():
            transport.write(frame)
            self.sent_total += len(frame)
            queued = transport.get_write_buffer_size()
            return not queued or self.queue_grew(len(frame), queued)
        held = self.held
        if held is not None:  # behind the held frames (never set while closing)
            held.append(frame)
            size = len(frame)
            self.sent_total += size
            self.held_size += size
            return self.held_size < self.held_cap or self.over_cap()
        return self._write_checked(frame)

    def _write_checked(self, frame: bytes) -> bool:
        """write_frame when the connection is not open, or is closing."""
        if self.closing:
            return False
        transport = self.transport
        if transport is None:
            pending = self._pending  # None once open() has run
            if pending is None or len(pending) >= _MAX_PENDING_FRAMES:
                return False
            pending.append(frame)
            return True
        if transport.is_closing():  # the peer is gone; the handler will notice
            return False
        self._update_writer()  # open, not closing, not held: the plain path
        return self.write_frame(frame)

    def queue_grew(self, size: int, queued: int) -> bool:
        """A frame of ``size`` bytes was written and ``queued`` bytes wait in
        the transport: apply the send-queue bounds; False if the client was dropped."""
        if size >= _BIG_FRAME:
            if self.big_frames is None:
                self.big_frames = deque()
            self._forget_flushed(self.sent_total - queued)
            self.big_frames.append((self.sent_total - size, self.sent_total))
        if queued > self.max_send_queue and self._queued_beyond_largest(queued) > self.max_send_queue:
            self.abort(f"slow client: send queue over {self.max_send_queue} bytes")
            return False
        if self.blocked_since is None:
            self.blocked_since = self._loop.time()
            self.block_mark = self._progress_mark(queued)
        return True

    def _queued_beyond_largest(self, queued: int) -> int:
        """Bytes queued, not counting what is left of the largest queued frame."""
        flushed = self.sent_total - queued
        self._forget_flushed(flushed)
        largest = max((end - max(start, flushed) for start, end in self.big_frames or ()), default=0)
        return queued - largest

    def _forget_flushed(self, flushed: int) -> None:
        big = self.big_frames
        while big and big[0][1] <= flushed:
            big.popleft()

    def _progress_mark(self, queued: int) -> int:
        """The sent_total the client must have taken for its send to count as
        progressing: everything queued now, or max_send_queue bytes of it
        (a frame bigger than the queue may take longer than one timeout)."""
        flushed = self.sent_total - queued
        return min(self.sent_total, flushed + self.max_send_queue)

    def check_timeouts(self, now: float) -> None:
        """Called about once a second: enforce read and write timeouts.

        The write timeout applies while closing too: a close waits for the
        queued frames to flush, and a client that never reads must not hold
        the connection open forever."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if (not self.closing and self.read_timeout and self.read_since is not None
                and now - self.read_since > self.read_timeout):
            reason = f"read timeout: nothing received for {self.read_timeout:g}s"
            self.log.debug("closing: %s", reason)
            self.close(CLOSE_POLICY, reason)
        if self.blocked_since is None or self.held is not None:  # held: released within this turn
            return
        queued = transport.get_write_buffer_size()
        if queued == 0:
            self.blocked_since = None
            self.big_frames = None
        elif self.sent_total - queued >= self.block_mark:
            # The client took what the mark asked for: progress.
            self.blocked_since = now
            self.block_mark = self._progress_mark(queued)
        elif self.write_timeout and now - self.blocked_since > self.write_timeout:
            self.abort(f"slow client: a send stayed blocked over {self.write_timeout:g}s")


# How often read and write timeouts are checked.
SWEEP_INTERVAL = 1.0


async def enforce_timeouts(conns: set[Connection],
                           also: Callable[[Connection, float], None] | None = None) -> None:
    """A server's sweeper: about once a second, each open connection's
    timeouts (and ``also``, a server's own per-connection check)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        now = loop.time()
        for conn in list(conns):
            conn.check_timeouts(now)
            if also is not None:
                also(conn, now)
