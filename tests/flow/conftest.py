"""Fixtures shared by the flow-control tests: each runs on one Redis and on a cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis


@pytest.fixture(params=["redis", "cluster"])
def partitions(request: pytest.FixtureRequest) -> int:
    return 1 if request.param == "redis" else 3


@pytest.fixture
def flow_client(request: pytest.FixtureRequest, partitions: int, redis_url: str) -> Iterator[Any]:
    made: Any = (
        redis.Redis.from_url(redis_url)
        if partitions == 1
        else request.getfixturevalue("cluster").client()
    )
    yield made
    made.close()
