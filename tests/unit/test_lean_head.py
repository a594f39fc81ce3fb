"""servers/lean_head.py against aiohttp's C parser: whatever head the lean
reader reads, the C parser reads the same way (same fields); every other head
is "not simple" and keeps the C parser's verdict. A table of heads, each kind
of malformation, and hypothesis-made variants of plain heads."""
from __future__ import annotations

import asyncio

import pytest
from aiohttp.http_exceptions import BadHttpMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connmix_py.servers.http_limits import head_parser
from connmix_py.servers.lean_head import Head, from_parsed, read_head
from connmix_py.textproto import canonical_header

PUBLISH = (b"POST /v1/mesh/publish HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nContent-Type: application/json\r\n"
           b"Content-Length: 40\r\n\r\n")
UPGRADE = (b"GET /ws?token=abc HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def head(*lines: str, request_line: str = "POST /v1/mesh/publish HTTP/1.1", host: bool = True) -> bytes:
    return ("\r\n".join((request_line, *(["Host: x"] if host else []), *lines)) + "\r\n\r\n").encode()


def fields_of(parsed: Head) -> tuple:
    # aiohttp gives well-known names in its own case: callers read names case-blind (Go's canonical form).
    return (parsed.method, parsed.target, parsed.path, parsed.version, parsed.should_close, parsed.upgrade,
            parsed.headers, [(canonical_header(name), lower, value) for name, lower, value in parsed.fields])


def c_parser_reads(data: bytes) -> Head | None:
    """The C parser's reading of a whole head; None when it refuses it."""
    try:
        messages, _, _ = head_parser(object()).feed_data(data)
    except BadHttpMessage:
        return None
    assert messages, "a whole head gives a message"
    return from_parsed(messages[0][0])


def assert_agree(data: bytes) -> Head | None:
    """The lean reading, checked against the C parser's when there is one."""
    lean = read_head(data)
    if lean is not None:
        parsed = c_parser_reads(data)
        assert parsed is not None, f"the C parser refuses a head read as plain: {data!r}"
        assert fields_of(lean) == fields_of(parsed)
    return lean


PLAIN = {
    "publish": PUBLISH,
    "upgrade": UPGRADE,
    "no headers": b"GET / HTTP/1.0\r\n\r\n",
    "http/1.0": head("Content-Length: 2", request_line="POST /v1/mesh/send HTTP/1.0"),
    "http/1.0 keep-alive": head("Connection: keep-alive", "Content-Length: 2",
                                request_line="POST /v1/mesh/send HTTP/1.0"),
    "http/1.1 close": head("Connection: close", "Content-Length: 0"),
    "keep-alive and upgrade": head("Connection: keep-alive, Upgrade", "Upgrade: websocket",
                                   request_line="GET /ws HTTP/1.1"),
    "upgrade without its header": head("Connection: upgrade", request_line="GET /ws HTTP/1.1"),
    "upgrade header alone": head("Upgrade: websocket", request_line="GET /ws HTTP/1.1"),
    "empty upgrade header": head("Connection: Upgrade", "Upgrade:", request_line="GET /ws HTTP/1.1"),
    "case of names": head("content-length: 5", "AUTHORIZATION: Basic eDp5", "hOsT: x", host=False),
    "duplicate authorization": head("Authorization: Basic YTpi", "Authorization: Basic Yzpk",
                                    "Content-Length: 1"),
    "duplicate other header": head("X-A: 1", "x-a: 2", "Content-Length: 1"),
    "spaces around values": head("Content-Length:   12  ", "X-Tab:\tv a l\t", "X-Empty:", "X-Spaces:    "),
    "query": head(request_line="GET /v1/stats?pretty=1&x=a/b? HTTP/1.1"),
    "trailing slash": head(request_line="GET /v1/mesh/ HTTP/1.1"),
    "long value": head("X-Long: " + "a" * 3000),
    "many headers": head(*(f"X-H{i}: {i}" for i in range(60))),
    "every method": head(request_line="DELETE /x HTTP/1.1"),
    "token characters": head("X!#$%&'*+-.^_`|~: v"),
}

NOT_SIMPLE = {  # the C parser's verdict stands (a refusal, or a reading left to it)
    "bare LF": b"POST /v1/mesh/publish HTTP/1.1\nHost: x\n\n",
    "bare LF in a line": head("Host: x\ny: z"),
    "bare CR": head("Host: x\ry"),
    "NUL in a value": head("Host: x\x00y"),
    "control in a value": head("X-A: a\x01b"),
    "DEL in a value": head("X-A: a\x7fb"),
    "byte over 0x7f": head("X-A: caf\xe9"),
    "obs-fold": head("X-A: a", " folded", "Content-Length: 1"),
    "space before the colon": head("Host : x"),
    "no colon": head("Host x"),
    "empty name": head(": x"),
    "name not a token": head("X(A): 1"),
    "two content-lengths": head("Content-Length: 1", "Content-Length: 1"),
    "content-length not digits": head("Content-Length: +1"),
    "content-length with a comma": head("Content-Length: 1, 1"),
    "transfer-encoding": head("Transfer-Encoding: chunked"),
    "two hosts": head("Host: b"),
    "http/1.1 without host": head(host=False),
    "two connections": head("Connection: keep-alive", "Connection: close"),
    "connection close and keep-alive": head("Connection: close, keep-alive"),
    "unknown connection token": head("Connection: TE"),
    "unknown method": head(request_line="BREW /pot HTTP/1.1"),
    "lower-case method": head(request_line="post /v1/mesh/publish HTTP/1.1"),
    "http/2": head(request_line="POST /v1/mesh/publish HTTP/2.0"),
    "http/0.9": head(request_line="GET /"),
    "absolute target": head(request_line="GET http://x/ HTTP/1.1"),
    "asterisk target": head(request_line="OPTIONS * HTTP/1.1"),
    "percent in the path": head(request_line="GET /a%20b HTTP/1.1"),
    "dot segment": head(request_line="GET /a/../b HTTP/1.1"),
    "empty segment": head(request_line="GET //a HTTP/1.1"),
    "fragment": head(request_line="GET /a#b HTTP/1.1"),
    "two spaces": head(request_line="GET  / HTTP/1.1"),
    "leading blank line": b"\r\n" + PUBLISH,
    "no blank line": PUBLISH[:-2],
    "head over the plain bound": head("X-Big: " + "a" * 5000),
    "too many headers": head(*(f"X-H{i}: {i}" for i in range(70))),
    "line over aiohttp's bound": head("X-Big: " + "a" * 9000),
}


@pytest.mark.parametrize("data", list(PLAIN.values()), ids=list(PLAIN))
async def test_a_plain_head_is_read_as_the_c_parser_reads_it(data):
    assert assert_agree(data) is not None


@pytest.mark.parametrize("data", list(NOT_SIMPLE.values()), ids=list(NOT_SIMPLE))
async def test_an_unusual_head_is_left_to_the_c_parser(data):
    assert read_head(data) is None


async def test_what_the_callers_read():
    publish = read_head(PUBLISH)
    assert publish is not None
    assert (publish.method, publish.target, publish.version, publish.should_close) == \
        ("POST", "/v1/mesh/publish", "1.1", False)
    assert publish.header("content-length") == "40" and publish.header("authorization") is None
    upgrade = read_head(UPGRADE)
    assert upgrade is not None and upgrade.upgrade and upgrade.path == "/ws"
    assert upgrade.fields[3] == ("Sec-WebSocket-Key", "sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    http10 = read_head(NOT_SIMPLE["two spaces"].replace(b"GET  /", b"GET /").replace(b"1.1", b"1.0"))
    assert http10 is not None and http10.should_close


# Pieces plain heads are made of, and bytes that break them.
_NAMES = st.one_of(
    st.text("!#$%&'*+-.^_`|~aZ09 ()/:;@\"", max_size=4),
    st.sampled_from(["Host", "content-length", "Connection", "Upgrade", "Authorization", "X-A", "x-a",
                     "Expect", "Transfer-Encoding", "Te", "Sec-WebSocket-Key"]))
_VALUES = st.one_of(
    st.text(" \t!~aZ09,;=\"\\", max_size=5),
    st.sampled_from(["1", "12", "x", " a b ", "\tv\t", "", "close", "keep-alive", "Upgrade",
                     "keep-alive, upgrade", "websocket", "chunked", "100-continue", "-1", "1,2"]))
_LINES = st.sampled_from(["POST /v1/mesh/publish HTTP/1.1", "POST /v1/mesh/send HTTP/1.0", "GET /ws?a=b HTTP/1.1",
                          "GET / HTTP/1.0", "PUT /a.b/c/ HTTP/1.1", "HEAD /x HTTP/1.1"])
_NOISE = st.sampled_from([b"\r", b"\n", b"\x00", b" ", b"\t", b":", b"\x80", b"%", b"/", b".", b"?", b",", b"\x7f"])


@st.composite
def mutated_heads(draw) -> bytes:
    lines = [draw(_LINES)] + [f"{draw(_NAMES)}:{draw(_VALUES)}" for _ in range(draw(st.integers(0, 6)))]
    data = bytearray(("\r\n".join(lines) + "\r\n\r\n").encode())
    for _ in range(draw(st.integers(0, 2))):  # a byte put in, or one taken out
        at = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[at:at] = draw(_NOISE)
        else:
            del data[at]
    return bytes(data)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_heads())
def test_mutated_heads_are_read_as_the_c_parser_reads_them_or_left_to_it(data):
    async def check() -> None:  # the C parser wants a running loop
        assert_agree(data)
    asyncio.run(check())
