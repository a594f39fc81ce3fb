"""The apiServer's lean front (api/front.py): publish and send answered
without aiohttp's request machinery, every other request handed to aiohttp
on the same connection, with the port's limits and access control. Raw
sockets, so keep-alive, pipelining and split writes are what the test says."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging

import aiohttp
import orjson
import pytest

from connmix_py import Engine, parse_settings
from connmix_py.codes import INVALID_ARGUMENT, SEND_FAILED
from connmix_py.config import AccessSettings
from tests.integration.test_connection_limits import start  # noqa: F401  (the fixture)

GUARD = 15  # a hang guard only

SUBSCRIBE = """
function on_message(msg)
    mix.websocket():subscribe("room")
    mix.websocket():send("joined")
end
"""
USERS = [
    {"username": "writer", "password": "pw-Writer", "roles": ["write"]},
    {"username": "viewer", "password": "pw-Viewer", "roles": ["read"]},
]


@pytest.fixture
def started(request):
    """started(api=None, access=None) -> Engine running SUBSCRIBE, from test_connection_limits'
    start fixture; access.users set as a reload sets them (read on every request)."""
    start_engine = request.getfixturevalue("start")

    async def run(api: dict | None = None, access: dict | None = None) -> Engine:
        engine = await start_engine(SUBSCRIBE, api)
        if access is not None:
            users = parse_settings({"access": access}).access
            await engine.apply_settings(dataclasses.replace(engine.settings, access=users))
        return engine

    return run


def request(method: str, path: str, body: bytes = b"", version: str = "1.1", **headers: str) -> bytes:
    head = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1"]
    if method == "POST":
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def publish(channel: str = "room", data: str = "hi", **headers: str) -> bytes:
    return request("POST", "/v1/mesh/publish", orjson.dumps({"c": channel, "d": data}), **headers)


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body: (status, headers lower-cased, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), GUARD)
    return int(lines[0].split(" ")[1]), headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), GUARD) == b""
    except ConnectionResetError:
        return True


async def connect(engine: Engine, data: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", engine.api_port)
    if data:
        writer.write(data)
        await writer.drain()
    return reader, writer


async def subscriber(session: aiohttp.ClientSession, engine: Engine) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(f"http://127.0.0.1:{engine.server_port()}/ws")
    await ws.send_str("join")
    assert (await ws.receive(GUARD)).data == "joined"
    return ws


async def test_many_publishes_on_one_kept_alive_connection_are_delivered_in_order(started):
    engine = await started()
    async with aiohttp.ClientSession() as session:
        ws = await subscriber(session, engine)
        reader, writer = await connect(engine)
        for i in range(50):
            writer.write(publish(data=f"m{i}"))
            status, headers, body = await read_response(reader)
            assert (status, orjson.loads(body)) == (200, {"E": None, "r": {"s": 1, "f": 0}})
            assert headers["content-type"] == "application/json"
        assert [(await ws.receive(GUARD)).data for _ in range(50)] == [f"m{i}" for i in range(50)]
        writer.close()


async def test_a_get_after_a_publish_is_answered_by_aiohttp_on_the_same_connection(started):
    engine = await started()
    reader, writer = await connect(engine, publish())
    status, _, body = await read_response(reader)
    assert status == 200 and orjson.loads(body)["E"] is None
    writer.write(request("GET", "/healthz"))
    status, _, body = await read_response(reader)
    assert (status, orjson.loads(body)["status"]) == (200, "ok")
    writer.write(publish())  # aiohttp's now: its route answers the same
    status, _, body = await read_response(reader)
    assert (status, orjson.loads(body)) == (200, {"E": None, "r": {"s": 0, "f": 0}})
    writer.close()


async def test_pipelined_requests_in_one_write_are_answered_in_order(started):
    engine = await started()
    send = request("POST", "/v1/mesh/send", b'{"c":"999","d":"x"}')
    reader, writer = await connect(engine, publish() + send + publish(channel="") + request("GET", "/v1/stats"))
    replies = [await read_response(reader) for _ in range(4)]
    assert [status for status, _, _ in replies] == [200] * 4
    assert orjson.loads(replies[0][2]) == {"E": None, "r": {"s": 0, "f": 0}}
    assert orjson.loads(replies[1][2])["E"]["c"] == SEND_FAILED  # no such client
    assert orjson.loads(replies[2][2])["E"]["c"] == INVALID_ARGUMENT  # an empty channel
    assert "connections" in orjson.loads(replies[3][2])["r"]
    writer.close()


async def test_a_body_split_over_many_writes_is_read_whole(started):
    engine = await started()
    whole = publish(data="x" * 300)
    reader, writer = await connect(engine)
    for i in range(0, len(whole), 7):
        writer.write(whole[i:i + 7])
        await writer.drain()
        await asyncio.sleep(0)
    status, _, body = await read_response(reader)
    assert (status, orjson.loads(body)["E"]) == (200, None)
    writer.close()


async def test_http_1_0_without_keep_alive_is_answered_then_closed(started):
    engine = await started()
    reader, writer = await connect(engine, request("POST", "/v1/mesh/publish", b'{"c":"a","d":"b"}', "1.0"))
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["connection"].lower() == "close"
    assert await closed(reader)
    writer.close()


async def test_http_1_0_with_keep_alive_stays_open(started):
    engine = await started()
    body = b'{"c":"a","d":"b"}'
    reader, writer = await connect(engine, request("POST", "/v1/mesh/publish", body, "1.0",
                                                   Connection="keep-alive"))
    assert (await read_response(reader))[1]["connection"].lower() == "keep-alive"
    writer.write(publish())
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_a_head_that_does_not_arrive_in_time_closes_the_connection(started):
    engine = await started(api={"handshakeTimeout": 0.5})
    reader, writer = await connect(engine, b"POST /v1/mesh/publish HTTP/1.1\r\nHost: x\r\n")
    assert await closed(reader)
    writer.close()
    reader, writer = await connect(engine, publish())  # kept alive: the timer runs again after a reply
    assert (await read_response(reader))[0] == 200
    assert await closed(reader)
    writer.close()


async def test_a_connection_busy_past_the_head_timeout_stays_open(started):
    """The head timeout counts from the previous reply: requests spread over
    more than one handshakeTimeout on a kept-alive connection are all answered."""
    engine = await started(api={"handshakeTimeout": 0.5})
    reader, writer = await connect(engine)
    for _ in range(7):  # 1.4 s of requests, one every 0.2 s (the pacing of the workload)
        writer.write(publish())
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(0.2)
    assert await closed(reader)  # then idle: closed
    writer.close()


async def test_a_kept_alive_connection_idle_past_the_head_timeout_after_several_requests_is_closed(started):
    """The head deadline is renewed by every reply, pipelined or not, and
    the front's sweep closes the connection once it idles past it."""
    engine = await started(api={"handshakeTimeout": 0.5})
    reader, writer = await connect(engine, publish() + publish() + publish())
    for _ in range(3):
        assert (await read_response(reader))[0] == 200
    for _ in range(2):
        writer.write(publish())
        assert (await read_response(reader))[0] == 200
    assert await closed(reader)
    writer.close()
    reader, writer = await connect(engine, publish())  # the port serves on
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_a_body_that_does_not_arrive_in_time_gets_408(started, caplog):
    engine = await started(api={"bodyTimeout": 0.5})
    with caplog.at_level(logging.WARNING, logger="connmix.http"):
        reader, writer = await connect(engine, publish()[:-3])
        status, _, body = await read_response(reader)
        assert (status, body) == (408, b"request body not received\n")
        assert await closed(reader)
    assert "request body not received within 0.5s (408)" in caplog.text
    writer.close()


async def test_a_body_over_16_mib_gets_413(started):
    engine = await started()
    size = 16 * 1024 * 1024 + 10
    reader, writer = await connect(engine)
    writer.write(f"POST /v1/mesh/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
    try:
        writer.write(b" " * size)
        await writer.drain()
    except ConnectionError:
        pass  # the reply and the close may come while the body is still going out
    status, _, body = await read_response(reader)
    assert status == 413 and b"16777216" in body
    writer.close()


@pytest.mark.parametrize("head, status", [
    (b"POST /v1/mesh/publish HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"POST /v1/mesh/publish HTTP/1.1\r\nHost x\r\n\r\n", 400),
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
])
async def test_bad_heads_get_one_reply_and_the_port_serves_on(started, head, status, caplog):
    engine = await started()
    with caplog.at_level(logging.WARNING, logger="connmix.http"):
        reader, writer = await connect(engine, head)
        assert (await read_response(reader))[0] == status
        assert await closed(reader)
    assert f"({status})" in caplog.text and "Traceback" not in caplog.text
    writer.close()
    reader, writer = await connect(engine, publish())
    assert (await read_response(reader))[0] == 200
    writer.close()


PUBLISH_BODY = b'{"c":"room","d":"hi"}'
# Publishes whose heads the lean reader leaves to aiohttp's parser: answered as before.
UNUSUAL_PUBLISHES = {
    "byte over 0x7f in a header": b"X-Name: caf\xc3\xa9\r\n",
    "head over the plain bound": b"X-Big: " + b"a" * 5000 + b"\r\n",
    "connection with an unknown token": b"Connection: keep-alive, TE\r\nTE: trailers\r\n",
}


@pytest.mark.parametrize("extra", list(UNUSUAL_PUBLISHES.values()), ids=list(UNUSUAL_PUBLISHES))
async def test_a_publish_with_an_unusual_head_is_answered_as_before(started, extra):
    engine = await started()
    async with aiohttp.ClientSession() as session:
        ws = await subscriber(session, engine)
        head = publish().split(b"\r\n\r\n")[0] + b"\r\n"
        reader, writer = await connect(engine, head + extra + b"\r\n" + PUBLISH_BODY + publish(data="after"))
        for _ in range(2):
            status, _, body = await read_response(reader)
            assert (status, orjson.loads(body)) == (200, {"E": None, "r": {"s": 1, "f": 0}})
        assert [(await ws.receive(GUARD)).data for _ in range(2)] == ["hi", "after"]
        writer.close()


@pytest.mark.parametrize("path", ["/v1/mesh/%70ublish", "/v1/mesh/publish?x=1"])
async def test_a_publish_whose_target_is_not_plain_is_answered_by_aiohttp(started, path):
    engine = await started()
    reader, writer = await connect(engine, request("POST", path, PUBLISH_BODY) + request("GET", "/healthz"))
    status, _, body = await read_response(reader)
    assert (status, orjson.loads(body)) == (200, {"E": None, "r": {"s": 0, "f": 0}})
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_access_control_on_the_lean_path_and_a_reload_revoking(started):
    engine = await started(access={"users": USERS})
    reader, writer = await connect(engine, publish())
    status, headers, body = await read_response(reader)
    assert (status, headers["www-authenticate"]) == (401, 'Basic realm="connmix"')
    assert orjson.loads(body) == {"error": "unauthorized: credentials required"}
    writer.write(publish(Authorization=basic("viewer", "pw-Viewer")))
    status, _, body = await read_response(reader)
    assert (status, orjson.loads(body)) == (403, {"error": "forbidden: user 'viewer' lacks the write role"})
    writer.write(publish(Authorization=basic("writer", "pw-Writer")))
    assert (await read_response(reader))[0] == 200
    writer_user = engine.settings.access.users[0]
    revoked = AccessSettings((dataclasses.replace(writer_user, password="changed"),))
    await engine.apply_settings(dataclasses.replace(engine.settings, access=revoked))
    writer.write(publish(Authorization=basic("writer", "pw-Writer")))  # the same connection
    assert (await read_response(reader))[0] == 401
    writer.close()


async def test_each_lean_request_logs_its_debug_line(started, caplog):
    engine = await started(access={"users": USERS})
    with caplog.at_level(logging.DEBUG, logger="connmix.api"):
        reader, writer = await connect(engine, publish(Authorization=basic("writer", "pw-Writer"))
                                       + publish(Authorization=basic("viewer", "pw-Viewer")))
        await read_response(reader)
        await read_response(reader)
        writer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "connmix.api"]
    assert lines[-2].startswith("api: POST /v1/mesh/publish 200 ") and lines[-2].endswith("user writer from 127.0.0.1")
    assert lines[-1].startswith("api: POST /v1/mesh/publish 403 ") and "user viewer" in lines[-1]
    assert "pw-" not in caplog.text


async def test_over_max_connections_a_publish_gets_503(started):
    engine = await started(api={"maxConnections": 1})
    first_reader, first = await connect(engine, publish())
    assert (await read_response(first_reader))[0] == 200
    reader, writer = await connect(engine, publish())
    assert (await read_response(reader))[0] == 503
    assert await closed(reader)
    writer.close()
    first.close()
