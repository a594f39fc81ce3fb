"""Hot configuration (issue 11): a real engine started from a real yaml file
that the test rewrites while it runs. access and logging.level apply without
a restart, a revoked user's /ws/v1 sessions end and nobody else's, a file
that does not load leaves the running settings serving, and a key that needs
a restart is said so once."""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import sys

import aiohttp
import pytest
import yaml

from connmix_py import Engine, parse_settings
from connmix_py.engine import StartupError
from tests.api_helpers import call
from tests.waiting import until, within

PASSWORDS = {"keeper": "keeper-Secret", "goner": "goner-Secret", "newcomer": "newcomer-Secret"}


def user(name: str, **changes) -> dict:
    entry = {"username": name, "password": PASSWORDS[name], "roles": ["read", "write"], "host": "127.0.0.1"}
    entry.update(changes)
    return entry


def basic(name: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{PASSWORDS[name]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class ConfigFile:
    """connmix.yaml in tmp_path; ``write`` replaces it as editors do (a new
    file renamed over the old one), so every version is a new file."""

    def __init__(self, tmp_path) -> None:
        self.path = str(tmp_path / "connmix.yaml")
        entry = tmp_path / "entry.lua"
        entry.write_text("function on_message(msg) end\n")
        self.server = {"port": 0, "bind": "127.0.0.1", "entry": str(entry), "byteCodeExpires": 0}
        self.version = 0

    def document(self, users: list[dict], level: str = "info", **server) -> dict:
        return {"logging": {"level": level},
                "access": {"users": users},
                "engine": {"configReloadInterval": 0.05,
                           "apiServer": {"port": 0, "bind": "127.0.0.1"},
                           "servers": [{**self.server, **server}]}}

    def write(self, users: list[dict], level: str = "info", top: dict | None = None, **server) -> None:
        document = {**self.document(users, level, **server), **(top or {})}
        self.write_text(yaml.safe_dump(document, sort_keys=False))

    def write_text(self, text: str) -> None:
        self.version += 1
        fresh = f"{self.path}.{self.version}"
        with open(fresh, "w") as f:
            f.write(text)
        os.replace(fresh, self.path)


@pytest.fixture
async def hot(tmp_path, session):
    """(the yaml file, start()) where start() runs an Engine on that file."""
    config = ConfigFile(tmp_path)
    engines: list[Engine] = []

    async def start() -> Engine:
        engine = Engine(config.path)
        await engine.start()
        engines.append(engine)
        return engine

    yield config, start
    for engine in engines:
        await engine.stop()


def api_url(engine: Engine) -> str:
    return f"http://127.0.0.1:{engine.api_port}"


async def publish_status(session: aiohttp.ClientSession, engine: Engine, name: str) -> int:
    async with session.post(api_url(engine) + "/v1/mesh/publish", json={"c": "news", "d": "hi"},
                            headers=basic(name)) as resp:
        return resp.status


async def test_an_added_user_is_let_in_without_a_restart(hot, session):
    config, start = hot
    config.write([user("keeper")])
    engine = await start()
    assert await publish_status(session, engine, "newcomer") == 401
    config.write([user("keeper"), user("newcomer")])
    await until(lambda: len(engine.settings.access.users) == 2, "the new access.users applied")
    assert await publish_status(session, engine, "newcomer") == 200
    assert await publish_status(session, engine, "keeper") == 200


@pytest.mark.parametrize("goner_now", [
    None,                                                   # removed
    user("goner", password="another-Secret"),               # password changed
    user("goner", roles=["read"]),                          # lost the write role
    user("goner", host="10.*.*.*"),                         # host no longer matching
], ids=["removed", "password", "role", "host"])
async def test_a_revoked_user_s_sessions_end_and_only_theirs(hot, session, goner_now):
    config, start = hot
    config.write([user("keeper"), user("goner")])
    engine = await start()
    goner = [await session.ws_connect(api_url(engine) + "/ws/v1", headers=basic("goner")) for _ in range(2)]
    keeper = await session.ws_connect(api_url(engine) + "/ws/v1", headers=basic("keeper"))
    assert (await call(goner[0], "mesh.publish", {"c": "news", "d": "x"}))["E"] is None

    config.write([user("keeper")] + ([goner_now] if goner_now else []))
    for ws in goner:
        async with within(10, "the revoked user's session closed"):
            msg = await ws.receive()
        assert (msg.type, ws.close_code, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1008, "access revoked")
    reply = await call(keeper, "mesh.publish", {"c": "news", "d": "x"})
    assert reply["E"] is None  # the other user's session goes on
    await keeper.close()


async def test_a_change_that_still_admits_the_user_keeps_their_session(hot, session):
    config, start = hot
    config.write([user("goner", roles=["write"])])
    engine = await start()
    ws = await session.ws_connect(api_url(engine) + "/ws/v1", headers=basic("goner"))
    config.write([user("goner", roles=["write", "read"]), user("newcomer")])
    await until(lambda: len(engine.settings.access.users) == 2, "the new access.users applied")
    assert (await call(ws, "mesh.publish", {"c": "news", "d": "x"}))["E"] is None
    await ws.close()


async def test_anonymous_sessions_end_when_access_gains_users(hot, session):
    config, start = hot
    config.write([])
    engine = await start()
    ws = await session.ws_connect(api_url(engine) + "/ws/v1")
    config.write([user("keeper")])
    async with within(10, "the anonymous session closed"):
        msg = await ws.receive()
    assert (msg.type, ws.close_code) == (aiohttp.WSMsgType.CLOSE, 1008)


@pytest.mark.parametrize("broken, line", [
    ("logging: { level: info\naccess: []\n", 2),                           # yaml syntax
    ("access:\n  users:\n    - { username: newcomer, password: x, roles: [root] }\n", 3),  # a bad value
])
async def test_a_file_that_does_not_load_leaves_the_running_settings(hot, session, caplog, broken, line):
    caplog.set_level(logging.INFO, logger="connmix")
    config, start = hot
    config.write([user("keeper")])
    engine = await start()
    config.write_text(broken)
    await until(lambda: any("not reloaded" in r.getMessage() for r in caplog.records), "the refusal logged")
    refusal = [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()][0]
    assert refusal.startswith(f"{config.path}:{line}: "), refusal
    assert "Traceback" not in caplog.text
    assert await publish_status(session, engine, "keeper") == 200  # the old access still serves
    config.write([user("keeper"), user("newcomer")])  # and a good version applies later
    await until(lambda: len(engine.settings.access.users) == 2, "the fixed file applied")
    assert await publish_status(session, engine, "newcomer") == 200


async def test_a_key_that_needs_a_restart_is_said_once(hot, caplog):
    caplog.set_level(logging.INFO, logger="connmix")
    config, start = hot
    config.write([user("keeper")])
    engine = await start()

    def restart_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "next restart" in r.getMessage()]

    config.write([user("keeper")], maxMessageSize=4096)
    await until(lambda: restart_lines(), "the restart note")
    config.write([user("keeper"), user("newcomer")], maxMessageSize=4096)  # another edit, same pending key
    await until(lambda: len(engine.settings.access.users) == 2, "the later edit applied")
    assert restart_lines() == [f"{config.path}: engine.servers changed; it applies at the next restart"]
    assert engine.settings.servers[0].max_message_size == 1024 * 1024  # still the running one


async def test_logging_level_applies_without_a_restart(hot):
    config, start = hot
    config.write([user("keeper")], level="info")
    engine = await start()
    levels: list[str] = []
    engine.on_logging_level = levels.append
    config.write([user("keeper")], level="error")
    await until(lambda: levels == ["error"], "the new level handed over")
    assert engine.settings.logging.level == "error"


async def test_settings_without_servers_do_not_start():
    with pytest.raises(StartupError, match="^engine.servers: no server is configured"):
        await Engine(parse_settings({"engine": {"server": [{"port": 0}]}})).start()


async def test_a_reload_without_servers_is_refused(hot, session, caplog):
    config, start = hot
    config.write([user("keeper")])
    engine = await start()
    config.write_text("access: {users: []}\nengine:\n  server: []\n")
    await until(lambda: "no server is configured" in caplog.text, "the refusal logged")
    assert await publish_status(session, engine, "newcomer") == 401  # access was not opened


async def test_connmix_single_follows_the_yaml_s_logging_level(tmp_path):
    config = ConfigFile(tmp_path)
    config.write([], level="info")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connmix_py", "single", "-f", config.path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(tmp_path))
    lines: list[str] = []

    async def read_until(text: str, what: str) -> None:
        async with within(30, what):
            while not any(text in line for line in lines):
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(lines)
                lines.append(line)

    try:
        await read_until("running", "the engine logged that it is running")
        # Each load warns of its unknown key at the level in force while it loads.
        config.write([], level="error", top={"unknownAtInfo": 1})
        await read_until("unknownAtInfo", "the warning at info level")
        config.write([], level="info", top={"unknownAtError": 1})
        await read_until("logging.level is now info", "the level back to info")
    finally:
        proc.kill()
        await asyncio.wait_for(proc.wait(), 30)
    assert not any("unknownAtError" in line for line in lines), "".join(lines)
