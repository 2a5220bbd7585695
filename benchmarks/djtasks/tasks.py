"""The benchmark's ``@task`` functions: the same for every backend."""

from __future__ import annotations

import hashlib
import json
import os

import redis

try:
    from django.tasks import task
except ImportError:  # Django < 6.0: the backport
    from django_tasks import task  # type: ignore[no-redef]

#: The list the start marker pushes to (database 2 of the private server).
STARTED_KEY = "bench-djtasks:started"

_marker_client: redis.Redis | None = None


@task()
def started() -> None:
    """The start marker, queued ahead of the measured tasks: the clock starts when it ran."""
    global _marker_client
    if _marker_client is None:
        _marker_client = redis.Redis.from_url(f"{os.environ['BENCH_REDIS_URL']}/2")
    _marker_client.rpush(STARTED_KEY, os.getpid())


@task()
def noop(n: int) -> None:
    """Nothing: what the backend itself costs per task."""


@task()
def checksum(n: int) -> str:
    """One small unit of work without a database: a JSON document and its SHA-256."""
    document = {"n": n, "items": [{"sku": f"item-{i}", "qty": i % 7} for i in range(20)]}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def expected_checksum(n: int) -> str:
    """What ``checksum(n)`` returns, for checking results."""
    return str(checksum.func(n))


BODIES = {"noop": noop, "checksum": checksum}
