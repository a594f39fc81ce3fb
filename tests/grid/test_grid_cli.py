"""`connmix engine -f`: a grid node, or one clear line and exit 1."""
from __future__ import annotations

import subprocess

import yaml

from tests.grid.conftest import ENTRY
from tests.grid_nodes import engine_command
from tests.ports import reserved_port


def run_engine(tmp_path, **engine) -> subprocess.CompletedProcess:
    conf = {"logging": {"filename": str(tmp_path / "connmix.log")},
            "engine": {"apiServer": {"port": 0, "bind": "127.0.0.1"},
                       "servers": [{"port": 0, "bind": "127.0.0.1", "entry": ENTRY}], **engine}}
    path = tmp_path / "connmix.yaml"
    path.write_text(yaml.safe_dump(conf))
    return subprocess.run(engine_command("engine", "-f", str(path)), capture_output=True, text=True, timeout=60)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_engine_without_a_broker_refuses_to_start(tmp_path):
    line = one_error_line(run_engine(tmp_path))
    assert "engine.broker: connmix engine needs a broker, e.g. broker: redis://127.0.0.1:6379/0" in line


def test_a_bad_broker_url_is_one_line(tmp_path):
    line = one_error_line(run_engine(tmp_path, broker="http://127.0.0.1:6379"))
    assert "engine.broker: scheme http:// is not one of" in line


def test_an_unreachable_broker_is_one_line(tmp_path):
    with reserved_port() as port:  # bound, never listening: connections are refused
        line = one_error_line(run_engine(tmp_path, broker=f"redis://127.0.0.1:{port}/0"))
    assert f"engine.broker: cannot register at redis://127.0.0.1:{port}/0" in line
