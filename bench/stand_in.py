"""What the in-process harnesses (inproc_*.py) share: a transport that takes
every write at once, and the masked text frame a client sends.

The harnesses run as scripts from this folder (`python bench/inproc_echo.py`),
so they import this module by its bare name.
"""
from __future__ import annotations

from typing import Any

CLIENT_MASK = b"\x11\x22\x33\x44"


class StandInTransport:
    """The transport calls our protocols and Connections make. Writes are
    taken at once: counted, with the first and the last kept (for checks)."""

    def __init__(self) -> None:
        self.written = 0
        self.first: bytes | None = None
        self.last: bytes | None = None
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.first is None:
            self.first = data
        self.last = data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def masked_text_frame(payload: bytes) -> bytes:
    """One final text frame of under 126 bytes, masked as a client must."""
    assert len(payload) < 126
    masked = bytes(b ^ CLIENT_MASK[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + CLIENT_MASK + masked
