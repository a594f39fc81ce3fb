"""`connmix check|dev -f FILE` as users run them: a user mistake is one line
naming the key (or file:line) and exit status 1, never a Python traceback."""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.waiting import logged_running

GOOD_LUA = """
function on_message(msg)
    mix.websocket():send(msg.data)
end
"""
SYNTAX_ERROR_LUA = """
function on_message(msg)
    local x =
end
"""


def write_config(folder: Path, server: str = "", top: str = "", lua: str = GOOD_LUA,
                 api_port: int = 0) -> Path:
    """A connmix.yaml on free ports; ``server`` adds keys to the one server."""
    (folder / "entry.lua").write_text(textwrap.dedent(lua))
    server_keys = {"port": "0", "bind": "127.0.0.1", "entry": "entry.lua"}
    for line in textwrap.dedent(server).strip().splitlines():
        key, _, value = line.partition(":")
        server_keys[key.strip()] = value.strip()
    body = "\n".join(f"      {k}: {v}" for k, v in server_keys.items())
    text = (f"{textwrap.dedent(top)}\nengine:\n  apiServer: {{port: {api_port}, bind: 127.0.0.1}}\n"
            f"  servers:\n    - {body.lstrip()}\n")
    path = folder / "connmix.yaml"
    path.write_text(text)
    return path


def connmix(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "connmix_py", *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_one_clear_line(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines()
              if not any(f" {level} " in line for level in ("DEBUG", "INFO", "WARNING"))]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("command", ["check", "dev"])
def test_lua_syntax_error_names_file_and_line(tmp_path, command):
    config = write_config(tmp_path, lua=SYNTAX_ERROR_LUA)
    result = connmix(command, "-f", str(config))
    assert_one_clear_line(result, "entry.lua:4:")


@pytest.mark.parametrize("server, key", [
    ("port: abc", "engine.servers[0].port"),
    ("port: 70000", "engine.servers[0].port"),
    ("protocol: mqtt", "engine.servers[0].protocol"),
    ("entry: missing.lua", "engine.servers[0].entry"),
    ("readTimeout: -1", "engine.servers[0].readTimeout"),
    ("writeTimeout: soon", "engine.servers[0].writeTimeout"),
    ("maxSendQueue: 0", "engine.servers[0].maxSendQueue"),
    ("options: 5", "engine.servers[0].options"),
    ("options: [{name: path, value: chat}]", "engine.servers[0].options"),
])
@pytest.mark.parametrize("command", ["check", "dev"])
def test_bad_value_names_the_key(tmp_path, command, server, key):
    config = write_config(tmp_path, server=server)
    line = assert_one_clear_line(connmix(command, "-f", str(config)), key)
    assert "unknown key" not in line


def test_bad_top_level_values_name_the_key(tmp_path):
    config = write_config(tmp_path, top="logging: {level: loud}")
    assert_one_clear_line(connmix("check", "-f", str(config)), "logging.level")
    config.write_text("engine:\n  servers: {port: 1}\n")
    assert_one_clear_line(connmix("check", "-f", str(config)), "engine.servers")
    config.write_text("engine:\n  apiServer: [1, 2]\n  servers: [{port: 1}]\n")  # no server: a 2nd problem
    assert_one_clear_line(connmix("check", "-f", str(config)), "engine.apiServer")


def test_same_port_twice_names_the_key(tmp_path):
    config = write_config(tmp_path, server="port: 7001", api_port=7001)
    assert_one_clear_line(connmix("check", "-f", str(config)), "engine.servers[0].port", "7001")


def test_broken_yaml_names_file_and_line(tmp_path):
    config = tmp_path / "connmix.yaml"
    config.write_text("engine:\n  servers:\n    - port: [1\n")
    assert_one_clear_line(connmix("check", "-f", str(config)), "connmix.yaml:")
    config.write_bytes(b"engine:\n  apiServer: {port: \xff\xfe}\n")
    assert_one_clear_line(connmix("check", "-f", str(config)), "connmix.yaml")


def test_missing_config_file(tmp_path):
    assert_one_clear_line(connmix("dev", "-f", str(tmp_path / "nope.yaml")), "nope.yaml", "cannot read")


@pytest.mark.parametrize("which", ["server", "api"])
def test_port_in_use_names_the_key(tmp_path, which):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if which == "server":
            config = write_config(tmp_path, server=f"port: {port}")
            key = "engine.servers[0].port"
        else:
            config = write_config(tmp_path, api_port=port)
            key = "engine.apiServer.port"
        line = assert_one_clear_line(connmix("dev", "-f", str(config)), key, "cannot listen")
        assert "in use" in line


def test_unwritable_log_file_names_the_key(tmp_path):
    config = write_config(tmp_path, top="logging: {filename: entry.lua/connmix.log}")
    assert_one_clear_line(connmix("single", "-f", str(config)), "logging.filename")


def test_check_accepts_a_good_config(tmp_path):
    result = connmix("check", "-f", str(write_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_unknown_keys_warn_once_and_check_passes(tmp_path):
    config = write_config(tmp_path, server="bogusOption: 1", top="extraSection: {a: 1}")
    result = connmix("check", "-f", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("engine.servers[0].bogusOption") == 1
    assert result.stderr.count("extraSection") == 1


async def test_dev_starts_despite_unknown_keys_and_stops_on_sigterm(tmp_path):
    config = write_config(tmp_path, server="bogusOption: 1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connmix_py", "dev", "-f", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        lines = await logged_running(proc)
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 30)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 30)
    output = "".join(lines) + rest.decode()
    assert output.count("bogusOption") == 1
    assert "Traceback" not in output


def test_check_reports_every_problem(tmp_path):
    """A broken module nobody requires yet and a runtime error while the
    entry loads: both reported, one line each."""
    config = write_config(tmp_path, lua="local x = nil\nlocal y = x.field\n")
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "codec.lua").write_text("return {\n  frame = function( end\n}\n")
    result = connmix("check", "-f", str(config))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2, result.stderr
    assert any("codec.lua:2:" in line for line in errors)
    assert any("entry.lua:2:" in line and "attempt to index" in line for line in errors)
