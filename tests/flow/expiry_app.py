"""An app module for the worker processes of test_expiry.py
(``flowd worker tests.flow.expiry_app:make_queue``).

Environment: ``FLOWD_REDIS_URL`` and ``FLOWD_TEST_STREAM`` (``S``). The queue
has the default claimer (dead-letter stream on). Each run of job ``n``
INCRs ``{S}:runs`` and SADDs ``n`` to ``{S}:ran``: a job that must never run
shows there if it did.
"""

from __future__ import annotations

import os
from typing import Any

import redis

import flowd
from flowd._redis.keys import derived_key
from tests.helpers import Numbered, numbered_queue


def make_queue() -> flowd.Queue[Any]:
    client = redis.Redis.from_url(os.environ["FLOWD_REDIS_URL"])
    stream = os.environ["FLOWD_TEST_STREAM"]
    runs, ran = derived_key(stream, "runs"), derived_key(stream, "ran")

    def work(task: flowd.Task[Numbered]) -> None:
        client.incr(runs)
        client.sadd(ran, task.job.n)

    return numbered_queue(client, stream, work, concurrency=4)
