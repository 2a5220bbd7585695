"""Fixtures of the consumer tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import flowd
from tests.helpers import numbered_queue


@pytest.fixture
def start(client: redis.Redis, stream: str) -> Iterator[Callable[..., flowd.QueueHandle]]:
    """Starts queues of Numbered jobs (unless ``job`` is given, block 0.5 s unless given) on
    the test's stream; each must stop cleanly at teardown."""
    handles: list[flowd.QueueHandle] = []

    def run(worker: Callable[[flowd.Task[Any]], None], **kwargs: Any) -> flowd.QueueHandle:
        kwargs.setdefault("block", 0.5)
        handle = numbered_queue(client, stream, worker, **kwargs).run()
        handles.append(handle)
        return handle

    yield run
    assert all([handle.stop(timeout=10) for handle in handles])
