"""The private redis-server every contender shares, one database (and client) per contender."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from flowd.cli.embedded import RedisServer

#: One Redis database per contender, all on the same server.
DB = {"flowd": 0, "rq": 1, "dramatiq": 2, "celery": 3}
PEERS = ("rq", "dramatiq", "celery")
PEER_QUEUE = "bench"  # the queue name in peer_dramatiq / peer_celery


class Context:
    """The private server, one client per database, and a scratch directory for logs."""

    def __init__(self, server: RedisServer, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self._clients: dict[int, redis.Redis] = {}

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.server.port}/{db}"

    def client(self, db: int) -> redis.Redis:
        if db not in self._clients:
            self._clients[db] = redis.Redis.from_url(self.url(db))
        return self._clients[db]

    def flush_peer(self, name: str) -> None:
        """Empty a peer's own database (only ever on the private server started here)."""
        self.client(DB[name]).flushdb()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def private_server() -> Iterator[Context]:
    server = RedisServer()
    server.start()
    tmp = Path(tempfile.mkdtemp(prefix="flowd-bench-"))
    ctx = Context(server, tmp)
    try:
        yield ctx
    finally:
        ctx.close()
        server.close()
