"""Issue 13, "The first hour": what a new user meets first, tried as they
would (real processes, real ports, real clients)."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import aiohttp
import pytest

from connmix_py import Engine, load_settings
from tests.conftest import EXAMPLE_DIR, ROOT
from tests.helpers import receive_json
from tests.integration.test_message_center import start_example
from tests.ports import reserved_port
from tests.waiting import logged_running, within

SCRIPT = """
function on_message(msg)
    error("secret-token-42 went wrong")
end
"""


async def test_lua_runtime_error_closes_with_1011_and_a_short_reason(start_engine, caplog):
    running = await start_engine(SCRIPT)
    ws = await running.connect()
    await ws.send_str("x")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1011, "lua error")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "entry0.lua:3: secret-token-42 went wrong" in logged  # the whole message stays in the log


async def test_client_used_without_with_closes_its_session_at_exit(start_engine):
    """Client(...).publish(...) in a script that never calls close(): nothing
    printed at exit (it was aiohttp's "Unclosed client session")."""
    running = await start_engine(SCRIPT)
    program = f"from connmix_py.client import Client\nprint(Client({running.api_url!r}).publish('news', 'hi'))\n"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert (process.returncode, out.decode(), err.decode()) == (0, "Published(delivered=0, failed=0)\n", "")


# -- examples/message-center: ports, one-line errors, and the script's replies ----------------

MAIN = os.path.join(EXAMPLE_DIR, "main.py")
EMBEDDING = os.path.join(ROOT, "examples", "embedding", "main.py")


async def run_example(program: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, program, *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def run_main(*args: str) -> asyncio.subprocess.Process:
    return await run_example(MAIN, *args)


def assert_one_error_line(process: asyncio.subprocess.Process, err: bytes, *expected: str) -> None:
    text = err.decode()
    errors = [line for line in text.splitlines() if " ERROR " in line or "error" in line.lower()]
    assert process.returncode == 1, text
    assert "Traceback" not in text and len(errors) == 1, text
    for part in expected:
        assert part in errors[0], errors[0]


@pytest.mark.parametrize("flag", ["--ws-port", "--api-port", "--auth-port"])
async def test_main_with_a_busy_port_prints_one_line_and_exits_1(flag):
    with socket.socket() as taken, reserved_port() as ws, reserved_port() as api, reserved_port() as auth:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {"--ws-port": ws, "--api-port": api, "--auth-port": auth,
                 flag: taken.getsockname()[1]}
        process = await run_main(*(str(part) for pair in ports.items() for part in pair))
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert_one_error_line(process, err, "cannot listen", "in use", flag)


async def test_main_takes_its_ports_from_the_command_line(session):
    with reserved_port() as ws_port, reserved_port() as api_port, reserved_port() as auth_port:
        process = await run_main("--ws-port", str(ws_port), "--api-port", str(api_port),
                                 "--auth-port", str(auth_port))
        try:
            await logged_running(process)
            ws = await session.ws_connect(f"http://127.0.0.1:{ws_port}/message-center")
            await ws.send_str('{"op":"auth","token":"***"}')  # the script asks the auth app on auth_port
            assert await receive_json(ws) == {"result": True}
            await ws.send_str('{"op":"subscribe","channel":"@user"}')
            assert await receive_json(ws) == {"result": True}
            # The auth app publishes through the API on api_port.
            async with session.post(f"http://127.0.0.1:{auth_port}/send_message",
                                    json={"uid": 1001, "msg": "hi"}) as resp:
                assert (await resp.json())["r"] == {"s": 1, "f": 0}
            assert await receive_json(ws) == {"event": "@user", "data": {"uid": 1001, "msg": "hi"}}
            await ws.close()
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0


@pytest.fixture
async def message_center(auth_app, tmp_path):
    center = await start_example(auth_app, tmp_path)
    yield center
    await center.engine.stop()


@pytest.mark.parametrize("frame, code", [
    ('{"op":"auth","token":"wrong"}', 2),
    ("not json", 3),
    ("[1, 2]", 4),  # a JSON array: no op in it
    (b"\x01\x02", 3),
    ('{"op":"publish","channel":"@user"}', 4),
    ('{"channel":"@user"}', 4),
    ('{"op":"subscribe","channel":"user"}', 5),
    ('{"op":"subscribe"}', 5),
    ('{"op":"subscribe","channel":"@group"}', 5),
    ('{"op":"subscribe","channel":"@user"}', 1),
], ids=["wrong-token", "not-json", "array", "binary", "unknown-op", "no-op", "channel-without-at",
        "no-channel", "unknown-channel-type", "not-authenticated"])
async def test_example_answers_every_refused_request_with_code_and_msg(message_center, session, frame, code):
    ws = await session.ws_connect(message_center.ws_url)
    await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
    reply = await receive_json(ws)
    assert reply["code"] == code and isinstance(reply["msg"], str) and reply["msg"], reply
    if code == 2:  # a wrong token: answered, then closed
        msg = await ws.receive(timeout=5)
        assert msg.type.name in ("CLOSE", "CLOSED")
    else:  # the connection stays usable
        await ws.send_str('{"op":"auth","token":"***"}')
        assert await receive_json(ws) == {"result": True}


# -- examples/chat-consumer/worker.py: says that it consumes, and that it reconnects ---------

CHAT = os.path.join(ROOT, "examples", "chat-consumer")


async def start_chat_engine(api_port: int) -> Engine:
    settings = load_settings(os.path.join(CHAT, "connmix.yaml"))
    settings.api_server.port = api_port
    settings.servers[0].port = 0
    engine = Engine(settings)
    await engine.start()
    return engine


async def read_until(process: asyncio.subprocess.Process, text: str) -> str:
    """The worker's stderr up to the first line containing text."""
    assert process.stderr is not None
    lines: list[str] = []
    async with within(20, f"the worker logged {text!r}"):
        while not lines or text not in lines[-1]:
            line = (await process.stderr.readline()).decode()
            assert line, "".join(lines)
            lines.append(line)
    return "".join(lines)


async def test_chat_worker_logs_that_it_consumes_and_reconnects(session):
    with reserved_port() as api_port:  # the engine comes back on the same port
        engine = await start_chat_engine(api_port)
        worker = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(CHAT, "worker.py"), f"http://127.0.0.1:{api_port}",
            stderr=asyncio.subprocess.PIPE)
        try:
            await read_until(worker, "consuming chat from")
            ws = await session.ws_connect(f"http://127.0.0.1:{engine.server_port()}/chat")
            await ws.send_str("hello")
            assert (await ws.receive(timeout=10)).data == "you said: hello"
            await read_until(worker, "answered client")
            await engine.stop()
            await read_until(worker, "connecting again")
            engine = await start_chat_engine(api_port)
            await read_until(worker, "consuming chat from")
        finally:
            worker.send_signal(signal.SIGINT)
            await asyncio.wait_for(worker.communicate(), timeout=30)
            await engine.stop()


# -- examples/embedding: the engine inside a Python program ------------------------------------

async def test_embedding_example_runs_publishes_and_stops_on_sigterm(session):
    with reserved_port() as ws_port, reserved_port() as api_port:
        process = await run_example(EMBEDDING, "--ws-port", str(ws_port), "--api-port", str(api_port))
        try:
            await logged_running(process)
            ws = await session.ws_connect(f"http://127.0.0.1:{ws_port}/ws")
            await ws.send_str("news")
            assert (await ws.receive(timeout=10)).data == "subscribed news"
            assert (await ws.receive(timeout=10)).data.startswith("tick ")  # published from Python
            await ws.close()
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()


async def test_embedding_example_with_a_busy_port_prints_one_line():
    with socket.socket() as taken, reserved_port() as ws_port:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = await run_example(EMBEDDING, "--ws-port", str(ws_port), "--api-port", str(taken.getsockname()[1]))
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert_one_error_line(process, err, "engine.apiServer.port", "cannot listen")


# -- scripts/run-example: the README's first command, run a second time --------------------------

async def run_example_script(venv: str, *ports: int) -> tuple[str, int]:
    """scripts/run-example until the example runs; (what it printed, exit status after SIGTERM)."""
    args = ("--ws-port", str(ports[0]), "--api-port", str(ports[1]), "--auth-port", str(ports[2]))
    process = await asyncio.create_subprocess_exec(
        os.path.join(ROOT, "scripts", "run-example"), *args, env={**os.environ, "CONNMIX_VENV": venv},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        lines = await logged_running(process, timeout=100)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), timeout=30)
    return "".join(lines), process.returncode


@pytest.mark.timeout(240)  # the first run may pip install (a hang guard, not a goal)
async def test_run_example_second_run_skips_the_install_and_says_so():
    venv = os.path.dirname(os.path.dirname(sys.executable))  # the tests' own venv, already installed
    with reserved_port() as ws_port, reserved_port() as api_port, reserved_port() as auth_port:
        await run_example_script(venv, ws_port, api_port, auth_port)  # installs only if never stamped
        output, code = await run_example_script(venv, ws_port, api_port, auth_port)
    assert code == 0, output
    assert "up to date" in output and "installing" not in output and "creating" not in output, output
    assert "starting examples/message-center/main.py" in output, output
    assert f"ws://127.0.0.1:{ws_port}/message-center" in output, output
