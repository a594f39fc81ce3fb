"""CONNMIX's install layout: ``connmix dev -f conf/connmix.yaml`` run from
the install root, lua/ beside conf/. A relative entry resolves against the
working directory first, then the yaml's folder; ``connmix check`` says
which file it used."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.waiting import logged_running

INSTALL = os.path.join(ROOT, "tests", "compat", "install")


def install(root: Path) -> Path:
    """The laravel-chat-shaped install, with our shipped lua/utils and lua/protocols."""
    shutil.copytree(INSTALL, root, dirs_exist_ok=True)
    for name in ("utils", "protocols"):
        shutil.copytree(os.path.join(ROOT, "lua", name), root / "lua" / name)
    return root


def connmix(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "connmix_py", *args], capture_output=True, text=True,
                          timeout=30, cwd=cwd, env={**os.environ, "PYTHONPATH": ROOT})


def test_check_from_the_install_root_uses_the_working_directory(tmp_path):
    root = install(tmp_path / "connmix")
    result = connmix(root, "check", "-f", "conf/connmix.yaml")
    assert result.returncode == 0, result.stderr
    assert f"engine.servers[0].entry: {root / 'lua' / 'entry.lua'}" in result.stdout.splitlines()


def test_the_yamls_folder_when_the_working_directory_has_no_such_file(tmp_path):
    root = install(tmp_path / "connmix")
    shutil.move(root / "lua", root / "conf" / "lua")  # lua/ beside the yaml instead
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = connmix(elsewhere, "check", "-f", str(root / "conf" / "connmix.yaml"))
    assert result.returncode == 0, result.stderr
    assert f"engine.servers[0].entry: {root / 'conf' / 'lua' / 'entry.lua'}" in result.stdout.splitlines()


def test_an_entry_in_neither_place_names_both(tmp_path):
    root = install(tmp_path / "connmix")
    shutil.rmtree(root / "lua")
    result = connmix(root, "check", "-f", "conf/connmix.yaml")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = result.stderr.strip()
    assert error.startswith("error: engine.servers[0].entry: file not found:")
    assert str(root / "lua" / "entry.lua") in error and str(root / "conf" / "lua" / "entry.lua") in error


async def test_dev_starts_from_the_install_root(tmp_path):
    root = install(tmp_path / "connmix")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connmix_py", "dev", "-f", "conf/connmix.yaml", cwd=root,
        env={**os.environ, "PYTHONPATH": ROOT}, stderr=asyncio.subprocess.PIPE)
    try:
        lines = await logged_running(proc)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 30)
    assert any(f"entry {root / 'lua' / 'entry.lua'}" in line for line in lines), "".join(lines)
