"""Request heads read without aiohttp's parser when they are plain.

A head is read here only when it is in a strict subset of HTTP/1.x that
aiohttp's C parser (llhttp) reads the same way: ``METHOD SP target SP
HTTP/1.1`` (or 1.0), the target an origin path with at most a query, header
names RFC 7230 tokens, values of visible ASCII, spaces and tabs only (no
obs-fold, no bare CR or LF, no NUL or other control characters), at most one
Content-Length of digits, one Connection of known tokens, no Transfer-Encoding,
well inside the size bounds of http_limits.py. Anything else is "not simple"
(None) and goes to aiohttp's parser, whose verdicts (400, 431, hand-over) stay
as they are: this module never refuses a head.

Both readings end in the same small Head, so callers read one kind of object:
the C parser's request is converted with ``from_parsed``. Header names and
paths are remembered (bounded caches); values and queries never are: they
carry credentials and websocket keys. Measured in-process (uvloop, the
bench's heads): a 4-line publish head 3.0 us here against 4.1 us for
aiohttp's parser made and fed (2.2 us when whole lines were remembered),
a 6-line upgrade head 3.5-3.9 us.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

# Plain heads are far below aiohttp's bounds (8190 per line, 128 headers):
# longer or bigger ones go to its parser, which answers 431 where it must.
MAX_HEAD = 4096
MAX_FIELDS = 64

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SEGMENT = r"[A-Za-z0-9_~!$&'()*+,;=:@-][A-Za-z0-9._~!$&'()*+,;=:@-]*"
# The target: a path of segments of unreserved and sub-delim characters (no
# "%", no dot segment, no empty one but a last "/"), an optional query of the
# same and "/" and "?".
_PATH = re.compile(r"(?:/" + _SEGMENT + r")+/?|/")
_QUERY = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/?-]*")
_METHODS = frozenset(("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"))  # all llhttp-known
_VERSIONS = {"HTTP/1.1": "1.1", "HTTP/1.0": "1.0"}
# Bytes a plain head may hold: visible ASCII, space, tab, CR and LF (no NUL,
# no other control character, nothing over 0x7e).
_PLAIN_BYTES = bytes(range(0x20, 0x7F)) + b"\t\r\n"
_CONNECTION_TOKENS = frozenset(("close", "keep-alive", "upgrade"))


class Head:
    """What the callers read of a request head."""

    __slots__ = ("method", "target", "path", "version", "should_close", "upgrade", "headers", "fields")

    def __init__(self, method: str, target: str, path: str, version: str, should_close: bool, upgrade: bool,
                 headers: dict[str, str], fields: list[tuple[str, str, str]]) -> None:
        self.method = method
        self.target = target  # as sent, query included
        self.path = path  # the decoded path, without the query
        self.version = version  # "1.1" or "1.0"
        self.should_close = should_close
        self.upgrade = upgrade  # Connection: upgrade and an Upgrade header (llhttp's rule)
        self.headers = headers  # lower-case name -> first value
        self.fields = fields  # (name as sent, lower-case name, value), every line in order

    def header(self, name: str) -> str | None:
        """The first value of a header, by its lower-case name."""
        return self.headers.get(name)


def read_head(head: bytes | bytearray) -> Head | None:
    """The Head of ``head`` (the request line up to and including the blank
    line) when it is plain, else None: aiohttp's parser decides."""
    if len(head) > MAX_HEAD or head.translate(None, _PLAIN_BYTES):
        return None
    lines = head.decode("ascii").split("\r\n")
    if len(lines) > MAX_FIELDS + 3 or lines[-1] or lines[-2] or head.count(b"\r") != len(lines) - 1 \
            or head.count(b"\n") != len(lines) - 1:
        return None  # too many lines, no blank line at the end, or a bare CR or LF
    request_line = _request_line(lines[0])
    if request_line is None:
        return None
    fields = []
    headers: dict[str, str] = {}
    for line in lines[1:-2]:
        name, colon, value = line.partition(":")
        lower = _lower_token(name) if colon else None
        if lower is None:
            return None
        field = (name, lower, value.strip(" \t"))
        fields.append(field)
        if lower in headers:
            if lower in _SINGLE:
                return None  # a repeat llhttp may refuse or read differently
            continue
        headers[lower] = field[2]
    return _head(request_line, headers, fields)


# Headers a plain head has at most once.
_SINGLE = frozenset(("content-length", "connection", "host", "upgrade", "transfer-encoding"))


def _request_line(line: str) -> tuple[str, str, str, str] | None:
    """(method, target, path, version) of a plain request line, else None."""
    method, _, rest = line.partition(" ")
    target, _, version = rest.partition(" ")
    if method not in _METHODS or version not in _VERSIONS:
        return None
    path, question, query = target.partition("?")
    if not _plain_path(path) or (question and _QUERY.fullmatch(query) is None):
        return None
    return method, target, path, _VERSIONS[version]


# Paths repeat from request to request; queries may carry tokens: not remembered.
@lru_cache(maxsize=256)  # a path is shorter than MAX_HEAD: 1 MiB at worst
def _plain_path(path: str) -> bool:
    return _PATH.fullmatch(path) is not None


# Header names repeat from request to request (values too, but they carry
# credentials and keys: only names are remembered).
@lru_cache(maxsize=256)  # a name is shorter than MAX_HEAD: 1 MiB at worst
def _lower_token(name: str) -> str | None:
    """A header name's lower case when it is an RFC 7230 token, else None."""
    return name.lower() if _TOKEN.fullmatch(name) is not None else None


def _head(request_line: tuple[str, str, str, str], headers: dict[str, str],
          fields: list[tuple[str, str, str]]) -> Head | None:
    """The Head once the lines are read, or None for headers llhttp weighs in ways not mirrored here."""
    method, target, path, version = request_line
    if "transfer-encoding" in headers or (version == "1.1" and "host" not in headers):
        return None  # a 1.1 request without Host is refused by llhttp
    length = headers.get("content-length")
    if length is not None and not length.isdigit():
        return None
    should_close = version == "1.0"
    upgrade = False
    connection = headers.get("connection")
    if connection is not None:
        tokens = _connection(connection)
        if tokens is None:
            return None
        close, upgrade = tokens
        if close is not None:
            should_close = close
        upgrade = upgrade and bool(headers.get("upgrade"))  # an empty Upgrade is none to llhttp
    return Head(method, target, path, version, should_close, upgrade, headers, fields)


@lru_cache(maxsize=64)
def _connection(value: str) -> tuple[bool | None, bool] | None:
    """(close: True, keep-alive: False, neither: None; upgrade) of a plain
    Connection value, else None."""
    tokens = {token.strip(" \t").lower() for token in value.split(",")}
    if not tokens <= _CONNECTION_TOKENS or {"close", "keep-alive"} <= tokens:
        return None
    close = True if "close" in tokens else False if "keep-alive" in tokens else None
    return close, "upgrade" in tokens


def from_parsed(request: Any) -> Head:
    """The Head of a request aiohttp's parser read (a RawRequestMessage)."""
    fields = [(name, name.lower(), value) for name, value in request.headers.items()]
    headers: dict[str, str] = {}
    for _, lower, value in fields:
        headers.setdefault(lower, value)
    version = request.version
    return Head(request.method, request.path, request.url.path, f"{version.major}.{version.minor}",
                request.should_close, request.upgrade, headers, fields)
