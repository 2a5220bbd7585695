"""A private master + replica + 3 sentinels on loopback, for failover tests."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import redis
import redis.sentinel

from tests.helpers import terminate
from tests.redis_server import RedisServer, find_redis_server, free_port

SERVICE = "flowd-test"


class _SentinelProcess:
    def __init__(self, binary: str, master_port: int, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / f"sentinel-{self.port}"
        self.dir.mkdir()
        self.config = self.dir / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 4000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.dir / "log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, str(self.config), "--sentinel"], stdout=log, stderr=log
            )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            terminate(proc, 10)


class SentinelSetup:
    """A master, one replica of it, and three sentinels watching them."""

    def __init__(self) -> None:
        self.binary = find_redis_server()
        self.master = RedisServer(binary=self.binary)
        self.replica: RedisServer | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="flowd-sentinel-")
        self.sentinels: list[_SentinelProcess] = []

    def start(self, timeout: float = 30.0) -> None:
        self.master.start()
        self.replica = RedisServer(
            binary=self.binary, extra_args=("--replicaof", "127.0.0.1", str(self.master.port))
        )
        self.replica.start()
        self._wait(lambda: _link_up(self.replica), timeout, "the replica did not sync")
        for _ in range(3):
            sentinel = _SentinelProcess(self.binary, self.master.port, Path(self._tmp.name))
            sentinel.start()
            self.sentinels.append(sentinel)
        self._wait(self._sentinels_ready, timeout, "the sentinels did not see the replica")

    @staticmethod
    def _wait(predicate: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if predicate():  # type: ignore[operator]
                    return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(what)
            time.sleep(0.1)

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            client = redis.Redis(host="127.0.0.1", port=sentinel.port)
            try:
                replicas = client.sentinel_slaves(SERVICE)
                sentinels = client.sentinel_sentinels(SERVICE)
            finally:
                client.close()
            if not replicas or len(sentinels) < 2:
                return False
        return True

    def sentinel(self, **kwargs: object) -> redis.sentinel.Sentinel:
        return redis.sentinel.Sentinel([("127.0.0.1", s.port) for s in self.sentinels], **kwargs)  # type: ignore[arg-type]

    def master_client(self, **kwargs: object) -> redis.Redis:
        return self.sentinel(socket_timeout=1.0).master_for(SERVICE, **kwargs)  # type: ignore[no-any-return]

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        if self.replica is not None:
            self.replica.close()
        self.master.close()
        self._tmp.cleanup()


def _link_up(server: RedisServer | None) -> bool:
    assert server is not None
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        return client.info("replication").get("master_link_status") == "up"
    finally:
        client.close()
