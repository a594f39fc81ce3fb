"""Issue 11, lifecycle: a stop stops accepting first, closes every client with
1001, gives callbacks waiting on mix.http.request or redis engine.shutdownGrace
seconds, then ends their waits; /healthz and /readyz; ``connmix --version``;
SIGTERM on a loaded gateway."""
from __future__ import annotations

import asyncio
import configparser
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict
from importlib import metadata
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml

from connmix_py import Engine, parse_settings
from connmix_py.config import Settings
from tests.conftest import engine_config
from tests.held_backend import eventually, held_fixture  # noqa: F401  (the held fixture)
from tests.integration.test_cli import assert_one_clear_line, connmix
from tests.waiting import logged_running

# Hang guards only. A wait the engine failed to end lasts the script's own
# timeout (120 s for http, 20 s for a blocked redis read): far beyond these.
STOP_GUARD = 15
SHORT_GRACE = 0.5
LONG_GRACE = 60  # never reached: the test releases the wait

SCRIPT = """
function on_message(msg)
    local conn = mix.websocket()
    if msg.data == "wait-http" then
        conn:send("waiting")
        local res, err = mix.http.request("GET", "%(held)s" .. "a", {timeout = "120s"})
        mix.queue.push("waited", res and res.body or err)
    elseif msg.data == "wait-redis" then
        conn:send("waiting")
        local value, err = mix.redis.connection("main"):command("BLPOP", "never-pushed", "0")
        mix.queue.push("waited", err or "a value")
    else
        conn:subscribe("news")
        conn:send("subscribed")
    end
end

function on_close(client_id, err)
    mix.queue.push("closed", err or "clean")
end
"""


async def start(tmp_path, held, grace: float, servers: int = 1, redis_port: int = 0, **top) -> Engine:
    entry = tmp_path / "entry.lua"
    entry.write_text(textwrap.dedent(SCRIPT % {"held": held.url("")}))
    luavm = {"redis": [{"name": "main", "addr": f"127.0.0.1:{redis_port}"}]} if redis_port else None
    conf = engine_config(str(entry), luavm)
    conf["engine"]["shutdownGrace"] = grace
    conf["engine"]["servers"] *= servers
    conf.update(top)
    engine = Engine(parse_settings(conf, base_dir=str(tmp_path)))
    await engine.start()
    return engine


def ws_url(engine: Engine, index: int = 0) -> str:
    return f"http://127.0.0.1:{engine.server_port(index)}/ws"


async def wait_in_callback(session, engine: Engine, what: str, index: int = 0) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(ws_url(engine, index))
    await ws.send_str(what)
    assert (await ws.receive(timeout=STOP_GUARD)).data == "waiting"
    return ws


async def stopping(engine: Engine):
    """engine.stop() under way, returned as a task."""
    task = asyncio.create_task(asyncio.wait_for(engine.stop(), STOP_GUARD))
    await eventually(lambda: engine.stopping, "the stop began")
    return task


async def test_a_wait_that_ends_within_the_grace_finishes_after_the_1001(tmp_path, held, session):
    engine = await start(tmp_path, held, LONG_GRACE)
    try:
        ws = await wait_in_callback(session, engine, "wait-http")
        await held.arrived("a")
        stop = await stopping(engine)
        closed = await ws.receive(timeout=STOP_GUARD)
        assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 1001
        assert engine.queues.size("waited") == 0  # still waiting after the client was closed
        held.release("a")
        await stop
    finally:
        await engine.stop()
    assert engine.queues.pop("waited") == "a"  # its wait finished with the real answer
    assert engine.queues.pop("closed") == "server shutting down"


async def test_a_http_wait_is_ended_after_the_grace(tmp_path, held, session):
    engine = await start(tmp_path, held, SHORT_GRACE)
    try:
        await wait_in_callback(session, engine, "wait-http")
        await held.arrived("a")
        await asyncio.wait_for(engine.stop(), STOP_GUARD)
    finally:
        held.release("a")
        await engine.stop()
    assert engine.queues.pop("waited") == "engine shutting down"
    assert engine.queues.size("closed") == 1  # on_close ran


async def test_a_redis_wait_is_ended_after_the_grace(tmp_path, held, session, redis_server):
    engine = await start(tmp_path, held, SHORT_GRACE, redis_port=redis_server.port)
    try:
        await wait_in_callback(session, engine, "wait-redis")
        await asyncio.wait_for(engine.stop(), STOP_GUARD)
    finally:
        await engine.stop()
    assert engine.queues.pop("waited") == "engine shutting down"
    assert engine.queues.size("closed") == 1  # on_close ran


async def test_every_server_stops_accepting_before_clients_are_closed(tmp_path, held, session):
    engine = await start(tmp_path, held, LONG_GRACE, servers=2)
    ports = [engine.server_port(0), engine.server_port(1)]
    try:
        ws = await wait_in_callback(session, engine, "wait-http", index=0)
        await held.arrived("a")
        stop = await stopping(engine)
        assert (await ws.receive(timeout=STOP_GUARD)).type == aiohttp.WSMsgType.CLOSE
        for port in ports:  # the other server too, while server 0's callback still waits
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
        assert engine.queues.size("waited") == 0
        held.release("a")
        await stop
    finally:
        await engine.stop()


USERS = [{"username": "admin", "password": "s3cret-Admin", "roles": ["read", "write"]}]


async def test_healthz_and_readyz_need_no_credentials_and_readyz_says_stopping(tmp_path, held, session):
    engine = await start(tmp_path, held, LONG_GRACE, access={"users": USERS})
    api = f"http://127.0.0.1:{engine.api_port}"
    try:
        async with session.get(api + "/v1/stats") as resp:
            assert resp.status == 401  # the access control is on
        async with session.get(api + "/healthz") as resp:
            assert resp.status == 200 and (await resp.json()) == {"status": "ok"}
        async with session.get(api + "/readyz") as resp:
            assert resp.status == 200 and (await resp.json()) == {"status": "ready"}

        await wait_in_callback(session, engine, "wait-http")
        await held.arrived("a")
        stop = await stopping(engine)
        async with session.get(api + "/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json()) == {"status": "not ready", "reasons": ["stopping"]}
        async with session.get(api + "/healthz") as resp:
            assert resp.status == 200  # alive while it drains
        held.release("a")
        await stop
    finally:
        await engine.stop()


async def test_readyz_reports_a_readiness_check_that_fails(tmp_path, held, session):
    """The hook a broker connection will use."""
    engine = await start(tmp_path, held, LONG_GRACE)
    broker = {"reason": "broker not connected"}
    engine.readiness_checks.append(lambda: broker["reason"])
    try:
        async with session.get(f"http://127.0.0.1:{engine.api_port}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["reasons"] == ["broker not connected"]
        broker["reason"] = None
        async with session.get(f"http://127.0.0.1:{engine.api_port}/readyz") as resp:
            assert resp.status == 200
    finally:
        await engine.stop()


def test_version_comes_from_the_package_metadata():
    result = connmix("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"connmix {metadata.version('connmix-py')}"


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_a_bad_shutdown_grace_names_the_key(tmp_path, value):
    (tmp_path / "entry.lua").write_text("function on_message(msg) end\n")
    config = tmp_path / "connmix.yaml"
    config.write_text(f"engine:\n  shutdownGrace: {value}\n  apiServer: {{port: 0, bind: 127.0.0.1}}\n"
                      "  servers:\n    - {port: 0, bind: 127.0.0.1, entry: entry.lua}\n")
    assert_one_clear_line(connmix("check", "-f", str(config)), "engine.shutdownGrace")


CLIENTS = 200
LOAD_SCRIPT = """
function on_message(msg)
    mix.websocket():subscribe("news")
    mix.websocket():send("subscribed")
end
function on_close(client_id, err)
    mix.log("info", "on_close ran: " .. (err or "clean"))
end
"""


async def read_until_close(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    async for _ in ws:  # publishes still arriving
        pass
    return ws.close_code


async def test_sigterm_with_many_clients_and_publishes_in_flight(tmp_path):
    (tmp_path / "entry.lua").write_text(LOAD_SCRIPT)
    config = tmp_path / "connmix.yaml"
    config.write_text("logging: {level: info}\nengine:\n  apiServer: {port: 0, bind: 127.0.0.1}\n"
                      "  servers:\n    - {port: 0, bind: 127.0.0.1, entry: entry.lua, "
                      "options: [{name: path, value: /ws}]}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connmix_py", "single", "-f", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    publisher = None
    # No connection limit: aiohttp's default of 100 would hold the 101st client.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        lines = await logged_running(proc)
        ws_port = next(int(line.split(":")[-1].split("/")[0]) for line in lines if "websocket server on" in line)
        api_port = next(int(line.split(":")[-1]) for line in lines if "api server on" in line)
        clients = [await session.ws_connect(f"http://127.0.0.1:{ws_port}/ws") for _ in range(CLIENTS)]
        for ws in clients:
            await ws.send_str("subscribe")
            assert (await ws.receive(timeout=STOP_GUARD)).data == "subscribed"
        readers = [asyncio.create_task(read_until_close(ws)) for ws in clients]

        async def publish_until_refused() -> None:
            body = orjson.dumps({"c": "news", "d": "x" * 1000})
            while True:
                try:
                    async with session.post(f"http://127.0.0.1:{api_port}/v1/mesh/publish", data=body) as resp:
                        await resp.read()
                except aiohttp.ClientError:
                    return
        publisher = asyncio.create_task(publish_until_refused())
        await asyncio.sleep(0.2)  # publishes are flowing
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 30)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        codes = await asyncio.wait_for(asyncio.gather(*readers), 30)
    finally:
        if publisher is not None:
            publisher.cancel()
        await session.close()
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 30)
    output = "".join(lines) + rest.decode()
    assert "Traceback" not in output
    assert codes == [1001] * CLIENTS
    assert output.count("on_close ran: server shutting down") == CLIENTS


# -- deploy/: the Dockerfile and the systemd unit --------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [(word.upper(), rest.strip()) for word, _, rest in
            (line.partition(" ") for line in lines if line and not line.startswith("#"))]


def shipped_config() -> dict:
    return yaml.safe_load((ROOT / "connmix.yaml").read_text())


def test_the_dockerfile_runs_the_shipped_config_as_a_user_with_a_health_check():
    steps = dockerfile_instructions()
    args = defaultdict(list)
    for word, rest in steps:
        args[word].append(rest)
    assert args["FROM"] == ["python:3.11-slim"]
    assert any("pip install" in run and run.rstrip().split("&&")[0].split()[-1] == "." for run in args["RUN"])
    users = args["USER"]
    assert users and users[-1] not in ("root", "0")
    assert json.loads(args["CMD"][-1]) == ["connmix", "single", "-f", "/etc/connmix/connmix.yaml"]
    assert "/etc/connmix" in json.loads(args["VOLUME"][0])
    engine = shipped_config()["engine"]
    ports = {engine["apiServer"]["port"]} | {server["port"] for server in engine["servers"]}
    assert {int(port) for line in args["EXPOSE"] for port in line.split()} == ports
    env = dict(item.split("=", 1) for line in args["ENV"] for item in line.split())
    assert int(env["CONNMIX_API_PORT"]) == engine["apiServer"]["port"]
    check = args["HEALTHCHECK"][-1]
    command = json.loads(check[check.index("CMD") + 3:])
    assert command[:2] == ["python", "-c"] and "/healthz" in command[2]
    compile(command[2], "HEALTHCHECK", "exec")  # a syntax error would mark every container unhealthy
    for run in args["RUN"]:  # what a RUN greps for in the shipped yaml must be there
        if "grep -q" in run:
            assert run.split("'")[1] in (ROOT / "connmix.yaml").read_text()
    for copy in args["COPY"]:
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert all(f"!{source}" in ignored for copy in args["COPY"] for source in copy.split()[:-1])


def test_the_systemd_unit_stops_with_sigterm_after_the_grace_and_is_hardened(tmp_path):
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(ROOT / "deploy" / "connmix.service")
    service = unit["Service"]
    assert service["Type"] in ("simple", "exec")
    assert service["User"] == "connmix"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > Settings().shutdown_grace
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert service["ExecStart"].endswith("connmix single -f /etc/connmix/connmix.yaml")
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verifies_the_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the structural test above still runs")
    # verify insists the programs exist: point the unit at this checkout's connmix.
    connmix_bin = Path(sys.executable).parent / "connmix"
    text = (ROOT / "deploy" / "connmix.service").read_text().replace("/opt/connmix/bin/connmix", str(connmix_bin))
    (tmp_path / "connmix.service").write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "connmix.service")],
                            capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values, saying so on stderr: both must stay empty.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
