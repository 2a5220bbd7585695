"""Fixtures of the fault suite: a private AOF-backed redis-server, a client of it, and
scenarios run against it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.faults.scenario import Outcome, run_scenario
from tests.helpers import client_of
from tests.redis_server import RedisServer


@pytest.fixture
def aof_server(private_redis: RedisServer) -> RedisServer:
    """The test's private redis-server with AOF on (appendfsync always): a kill loses no
    acked write. The test may stop, kill and restart it (defined once, as private_redis)."""
    return private_redis


@pytest.fixture
def admin(aof_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of ``aof_server``, for the test's own checks."""
    with client_of(aof_server) as client:
        yield client


@pytest.fixture
def scenario(aof_server: RedisServer, admin: redis.Redis) -> Callable[..., Outcome]:
    """``run_scenario`` on ``aof_server``, with ``admin`` for progress and the account."""
    return functools.partial(run_scenario, url=aof_server.url, admin=admin)
