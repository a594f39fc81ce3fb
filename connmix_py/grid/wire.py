"""The envelopes nodes exchange through the broker: compact, binary-safe,
versioned by their first byte.

Every envelope starts with a fixed header (network byte order)::

    version (1 byte) | kind (1 byte) | origin node (2 bytes) | request id (8 bytes)

then a body that depends on the kind:

    PUBLISH  flags (1) | payload...                     on a channel's topic; the
                                                        channel is the topic's name
    REPORT   delivered (4) | failed (4)                 a node's local counts for a publish
    SEND     flags (1) | id length (1) | client id | payload...
    CALL     name length (1) | id length (1) | name | client id | argument (JSON)
    RESULT   ok (1)                                     the answer to a SEND or CALL

The request id pairs a REPORT or RESULT with the publish, send or call of
the origin node that is waiting for it. A payload is the rest of the
envelope, never escaped, so any bytes travel as they are.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import orjson

VERSION = 1

PUBLISH, REPORT, SEND, CALL, RESULT = range(1, 6)
KIND_NAMES = {PUBLISH: "publish", REPORT: "report", SEND: "send", CALL: "call", RESULT: "result"}

_HEADER = struct.Struct("!BBHQ")
_COUNTS = struct.Struct("!II")
_BINARY = 1  # PUBLISH/SEND flags: the payload is a binary frame, not text

# conn.call functions whose argument holds context values: a script reads
# the context's strings as bytes, so they travel as JSON text and are turned
# back into bytes on arrival.
_CONTEXT_CALLS = frozenset({"set_context", "set_context_value"})


class WireError(ValueError):
    """An envelope that cannot be read; the message is one line."""


@dataclass(frozen=True)
class Envelope:
    kind: int
    origin: int
    request: int
    client_id: str = ""
    payload: bytes = b""
    binary: bool = False
    delivered: int = 0
    failed: int = 0
    name: str = ""
    argument: Any = None
    ok: bool = False


def _header(kind: int, origin: int, request: int) -> bytes:
    return _HEADER.pack(VERSION, kind, origin, request)


def publish(origin: int, request: int, payload: bytes, binary: bool) -> bytes:
    return b"".join((_header(PUBLISH, origin, request), bytes((_BINARY if binary else 0,)), payload))


def report(origin: int, request: int, delivered: int, failed: int) -> bytes:
    return _header(REPORT, origin, request) + _COUNTS.pack(delivered, failed)


def send(origin: int, request: int, client_id: str, payload: bytes, binary: bool) -> bytes:
    target = client_id.encode()
    return b"".join((_header(SEND, origin, request), bytes((_BINARY if binary else 0, len(target))),
                     target, payload))


def call(origin: int, request: int, client_id: str, name: str, argument: Any) -> bytes:
    target, function = client_id.encode(), name.encode()
    # bytes (context strings) go out as JSON text; _CONTEXT_CALLS brings them back.
    body = orjson.dumps(argument, default=_text)
    return b"".join((_header(CALL, origin, request), bytes((len(function), len(target))), function,
                     target, body))


def result(origin: int, request: int, ok: bool) -> bytes:
    return _header(RESULT, origin, request) + bytes((1 if ok else 0,))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    raise TypeError(f"{type(value).__name__} cannot travel in a conn.call")


def _as_context(value: Any) -> Any:
    """A JSON value as a context keeps it: strings as bytes."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict):
        return {key: _as_context(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_context(item) for item in value]
    return value


def decode(data: bytes) -> Envelope:
    """Read an envelope; raises WireError on anything malformed."""
    if len(data) < _HEADER.size:
        raise WireError(f"envelope of {len(data)} bytes is shorter than its header")
    version, kind, origin, request = _HEADER.unpack_from(data)
    if version != VERSION:
        raise WireError(f"envelope version {version} is not {VERSION}")
    body = memoryview(data)[_HEADER.size:]
    try:
        if kind == PUBLISH:
            return Envelope(kind, origin, request, payload=bytes(body[1:]), binary=_flag(body))
        if kind == REPORT:
            delivered, failed = _COUNTS.unpack(body)
            return Envelope(kind, origin, request, delivered=delivered, failed=failed)
        if kind == SEND:
            end = 2 + body[1]
            return Envelope(kind, origin, request, client_id=_string(body[2:end], body[1]),
                            payload=bytes(body[end:]), binary=_flag(body))
        if kind == CALL:
            name_end = 2 + body[0]
            id_end = name_end + body[1]
            name = _string(body[2:name_end], body[0])
            argument = orjson.loads(body[id_end:])
            if name in _CONTEXT_CALLS:
                argument = _as_context(argument)
                if name == "set_context_value":  # a (key, value) pair; its key stays a str
                    argument = (argument[0].decode(), argument[1])
            return Envelope(kind, origin, request, client_id=_string(body[name_end:id_end], body[1]),
                            name=name, argument=argument)
        if kind == RESULT:
            if len(body) != 1:
                raise WireError("a result carries one byte")
            return Envelope(kind, origin, request, ok=body[0] == 1)
    except (IndexError, struct.error, orjson.JSONDecodeError, UnicodeDecodeError, TypeError,
            AttributeError) as exc:
        raise WireError(f"malformed {KIND_NAMES[kind]} envelope: {exc}") from None
    raise WireError(f"unknown envelope kind {kind}")


def _flag(body: memoryview) -> bool:
    return bool(body[0] & _BINARY)


def _string(view: memoryview, length: int) -> str:
    if len(view) != length:
        raise WireError(f"a name of {length} bytes is cut short at {len(view)}")
    return bytes(view).decode()
