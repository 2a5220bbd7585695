"""Fixtures: a private redis-server per session, clients, unique stream names."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

import flowd
from tests.helpers import QueueFactory, client_of, running_server
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer, find_redis_server, server_version

# The machine runs a shared Redis on 6379 that the tests must never touch: a
# connection that silently falls back to redis-py's default address (as a bare
# Sentinel-managed connection once did) fails loudly here instead.
_FORBIDDEN_PORT = 6379
_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: object) -> None:
    if isinstance(address, tuple) and len(address) >= 2 and address[1] == _FORBIDDEN_PORT:
        raise AssertionError(
            f"a test tried to connect to {address}: the shared Redis is off limits"
        )
    _real_connect(self, address)  # type: ignore[arg-type]


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]


def pytest_report_header(config: pytest.Config) -> str:
    """Which redis-server the tests start, and why that one."""
    if os.environ.get("FLOWD_TEST_REDIS_URL"):
        return "redis: FLOWD_TEST_REDIS_URL (an external server)"
    try:
        binary = find_redis_server()
    except FileNotFoundError as exc:
        return f"redis-server: {exc}"
    why = "FLOWD_REDIS_SERVER" if os.environ.get("FLOWD_REDIS_SERVER") else "newest found"
    version = ".".join(map(str, server_version(binary))) or "unknown version"
    return f"redis-server: {binary} ({version}; {why})"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the Redis the suite talks to: FLOWD_TEST_REDIS_URL, else a private server."""
    external = os.environ.get("FLOWD_TEST_REDIS_URL")
    if external:
        yield external
        return
    with running_server() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_version(redis_url: str) -> tuple[int, ...]:
    client = redis.Redis.from_url(redis_url)
    try:
        return tuple(int(p) for p in str(client.info("server")["redis_version"]).split("."))
    finally:
        client.close()


@pytest.fixture(params=[False, True], ids=["bytes", "decoded"])
def any_client(request: pytest.FixtureRequest, redis_url: str) -> Iterator[redis.Redis]:
    """A client with and without decode_responses=True."""
    client = redis.Redis.from_url(redis_url, decode_responses=request.param)
    yield client
    client.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def stream(request: pytest.FixtureRequest) -> str:
    """A stream name no other test uses; the server is never flushed."""
    return f"t-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, with AOF on, that the test may kill and restart."""
    with running_server(appendonly=True) as server:
        yield server


@pytest.fixture
def oom_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own with ``noeviction``, whose maxmemory a test lowers
    (CONFIG SET) to make Redis refuse writes, as a full server does."""
    with running_server(extra_args=("--maxmemory-policy", "noeviction")) as server:
        yield server


@pytest.fixture
def oom_admin(oom_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of :func:`oom_server`."""
    with client_of(oom_server) as client:
        yield client


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """A three-master Redis Cluster of the test module's own (its tests share it)."""
    built = RedisCluster(3)
    try:
        built.start()
        yield built
    finally:
        built.close()


@pytest.fixture
def make_queue(client: redis.Redis, stream: str) -> Iterator[QueueFactory]:
    """Builds queues (no claimer unless given) and stops every handle it ran on teardown."""
    factory = QueueFactory(client, stream)
    yield factory
    factory.stop_all()


@pytest.fixture
def producer(client: redis.Redis, stream: str) -> flowd.Producer:
    return flowd.Producer(client, stream)


@pytest.fixture
def private_client(private_redis: RedisServer) -> Iterator[redis.Redis]:
    with client_of(private_redis) as client:
        yield client


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a flowd thread running."""
    yield
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("flowd-")]
    for t in threading.enumerate():
        if t.name.startswith("flowd-"):
            t.join(timeout=5)
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("flowd-")]
    assert not leftover, f"flowd threads still alive after the test: {leftover}"
