"""A private Redis Cluster of N masters on loopback, built without redis-cli.

Each node is a private redis-server with cluster mode on; the slots are split
into N equal ranges (node i owns range i, as ``redis-cli --cluster create``
does), the nodes meet, and the fixture waits for ``cluster_state:ok``.
"""

from __future__ import annotations

import random
import socket
import time

import redis

from tests.redis_server import RedisServer

SLOTS = 16384


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(1000):
        port = random.randint(20000, 55000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """N cluster-enabled redis-server processes forming one cluster."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        for _ in range(masters):
            self.nodes.append(
                RedisServer(
                    port=_cluster_port(),
                    extra_args=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        "2000",
                        "--cluster-config-file",
                        "nodes.conf",
                    ),
                )
            )

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        clients = [redis.Redis(host="127.0.0.1", port=n.port) for n in self.nodes]
        try:
            count = len(self.nodes)
            for i, client in enumerate(clients):
                first, last = i * SLOTS // count, (i + 1) * SLOTS // count
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
            for client in clients[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
            deadline = time.monotonic() + timeout
            while not all(self._ready(c, count) for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not become ready")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    @staticmethod
    def _ready(client: redis.Redis, count: int) -> bool:
        info = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and f"cluster_known_nodes:{count}" in text

    def client(self, **kwargs: object) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        for node in self.nodes:
            node.close()
