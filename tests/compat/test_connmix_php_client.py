"""A backend written against CONNMIX's PHP client (connmix/connmix-php) on
the wire: discovery (GET /version, GET /v1/nodes), then /ws/v1 frames built
byte for byte as its source builds them (PHP's json_encode of
['m' => ..., 'p' => ..., 'i' => AutoIncrement::id()], ids counting from 0;
client ids as PHP ints), driving a laravel-chat-shaped script in the old
calling style, installed in CONNMIX's layout."""
from __future__ import annotations

import json
import os
import shutil

import aiohttp
import pytest

from connmix_py import Engine
from connmix_py.config import load_settings
from tests.conftest import ROOT
from tests.helpers import receive_json
from tests.tcp_client import TcpClient

INSTALL = os.path.join(os.path.dirname(__file__), "install")


def php_json_encode(value) -> str:
    """PHP's json_encode with default flags: no spaces, ASCII only, "/" escaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/")


class PhpNode:
    """The PHP client's AsyncNode/SyncNode frames on one /ws/v1 connection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0  # AutoIncrement::id() returns 0 first
        self.events: list[dict] = []  # events that came before an awaited reply

    async def send(self, method: str, params) -> int:
        request_id, self.next_id = self.next_id, self.next_id + 1
        await self.ws.send_str(php_json_encode({"m": method, "p": params, "i": request_id}))
        return request_id

    async def pop(self, *topics: str) -> int:
        return await self.send("queue.pop", list(topics))  # $this->send('queue.pop', $topics)

    async def set_context_value(self, client_id: int, key: str, value) -> int:
        return await self.send("conn.call", {"c": client_id, "f": "set_context_value", "a": [key, value]})

    async def mesh_send(self, client_id: int, data: str) -> int:
        return await self.send("mesh.send", {"c": client_id, "d": data})

    async def reply(self, request_id: int) -> dict:
        """The reply to a request; events met before it wait for event()."""
        while True:
            frame = await receive_json(self.ws)
            if frame.get("e") == "queue.pop":  # Message::type() == 'event'
                self.events.append(frame)
                continue
            assert frame.get("i") == request_id, frame
            return frame

    async def event(self) -> dict:
        event = self.events.pop(0) if self.events else await receive_json(self.ws)
        assert event["e"] == "queue.pop", event
        return event["p"]


@pytest.fixture
async def installed(tmp_path, monkeypatch, session):
    """CONNMIX's layout (conf/connmix.yaml beside lua/), our shipped helpers
    in lua/utils and lua/protocols; started from the install root."""
    shutil.copytree(INSTALL, tmp_path, dirs_exist_ok=True)
    shutil.copytree(os.path.join(ROOT, "lua", "utils"), tmp_path / "lua" / "utils")
    shutil.copytree(os.path.join(ROOT, "lua", "protocols"), tmp_path / "lua" / "protocols")
    monkeypatch.chdir(tmp_path)
    engine = Engine(load_settings("conf/connmix.yaml"))
    await engine.start()
    yield engine
    await engine.stop()


async def discover(session: aiohttp.ClientSession, host: str) -> str:
    """Nodes::loadVersion and Nodes::loadNodes: the node's api_server."""
    async with session.get(f"{host}/version") as resp:
        version = (await resp.json())["apis"][0]
    async with session.get(f"{host}/{version}/nodes") as resp:
        nodes = (await resp.json())["nodes"]
    assert version == "v1" and len(nodes) == 1
    return nodes[0]["api_server"]


async def test_laravel_chat_shaped_script_driven_by_the_php_clients_frames(installed, session):
    engine = installed
    address = await discover(session, f"http://127.0.0.1:{engine.api_port}")
    assert address == f"127.0.0.1:{engine.api_port}"
    node = PhpNode(await session.ws_connect(f"ws://{address}/ws/v1"))
    assert await node.reply(await node.pop("chat")) == {"E": None, "r": {"s": True}, "i": 0}

    user = await TcpClient.connect(engine.server_port())
    connect = await node.event()
    assert connect["t"] == "chat" and connect["d"] == {"event": "connect"}
    client_id = int(connect["c"])  # Message::clientID(): int
    assert client_id > 2 ** 53  # a float on the way would lose it

    # auth, and a message pipelined right behind it: it waits for the uid.
    await user.send(b'{"op":"auth","token":"t-1001"}\n{"op":"say","text":"hi"}\n')
    auth = await node.event()
    assert auth["d"]["frame"] == {"type": "text", "data": '{"op":"auth","token":"t-1001"}'}
    assert auth["d"]["headers"]["remote"].startswith("127.0.0.1:") and "uid" not in auth["d"]
    request_id = await node.set_context_value(int(auth["c"]), "uid", 1001)
    assert await node.reply(request_id) == {"E": None, "r": {"s": True}, "i": request_id}
    request_id = await node.mesh_send(client_id, php_json_encode({"op": "auth", "success": True}))
    assert (await node.reply(request_id))["r"] == {"s": True}
    assert await user.recv_line() == '{"op":"auth","success":true}'
    said = await node.event()
    assert said["d"]["uid"] == 1001 and json.loads(said["d"]["frame"]["data"]) == {"op": "say", "text": "hi"}

    # Guzzle's JSON body to the HTTP API, the client id an integer too.
    async with session.post(f"http://{address}/v1/mesh/send",
                            data=php_json_encode({"c": client_id, "d": "from http"})) as resp:
        assert await resp.json() == {"E": None, "r": {"s": True}}
    assert await user.recv_line() == "from http"

    await user.close()
    closed = await node.event()
    assert closed["d"] == {"event": "close", "uid": 1001} and int(closed["c"]) == client_id
