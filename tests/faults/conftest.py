"""Fixtures of the fault suite: a private AOF-backed redis-server and a client of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.redis_server import RedisServer


@pytest.fixture
def aof_server(private_redis: RedisServer) -> RedisServer:
    """The test's private redis-server with AOF on (appendfsync always): a kill loses no
    acked write. The test may stop, kill and restart it (defined once, as private_redis)."""
    return private_redis


@pytest.fixture
def admin(aof_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of ``aof_server``, for the test's own checks."""
    client = redis.Redis.from_url(aof_server.url)
    yield client
    client.close()
