"""A WSGI app that starts its queue at import, as README's "Consuming in an application" says.

Served by gunicorn in tests/consumer/test_lifecycle.py; the environment gives FLOWD_REDIS_URL and
FLOWD_TEST_STREAM. Each job records the pid of the process that ran it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

import flowd
from tests.consumer.lifecycle.wsgi_job import Sleep
from tests.helpers import numbered_queue

# As applications do: flowd's records go to the root logger's handler (stderr).
logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(levelname)s %(message)s")

client = redis.Redis.from_url(os.environ["FLOWD_REDIS_URL"])
STREAM = os.environ["FLOWD_TEST_STREAM"]


def work(task: flowd.Task[Sleep]) -> None:
    time.sleep(task.job.seconds)
    client.rpush(f"{STREAM}:ran", os.getpid())


queue = numbered_queue(
    client,
    STREAM,
    work,
    group="web",
    job=Sleep,
    concurrency=2,
    claimer=flowd.Claimer(min_idle_time=30),
    stop_timeout=10,
)
handle = queue.run()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{os.getpid()} running={handle.is_running}\n".encode()]
