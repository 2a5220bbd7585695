"""A process running one queue with an ``every`` schedule, for test_schedule.py.

Environment: ``FLOWD_REDIS_URL``, ``FLOWD_TEST_STREAM`` and ``FLOWD_TEST_EVERY``
(seconds). Each run of the tick job appends its stream id (the enqueue time, by
Redis's clock) to the list ``{S}:ticks``. Prints ``running`` once the queue
runs, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass

import redis

import flowd
from tests.helpers import numbered_queue


@dataclass
class Tick(flowd.Job):
    """The scheduled job."""

    source: str = "schedule"


def main() -> int:
    client = redis.Redis.from_url(os.environ["FLOWD_REDIS_URL"])
    stream = os.environ["FLOWD_TEST_STREAM"]
    ticks = flowd._redis.keys.derived_key(stream, "ticks")

    def work(task: flowd.Task[Tick]) -> None:
        client.rpush(ticks, task.id)

    queue = numbered_queue(
        client,
        stream,
        work,
        job=Tick,
        schedules=[flowd.Schedule("tick", Tick, every=float(os.environ["FLOWD_TEST_EVERY"]))],
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    handle = queue.run()
    print("running", flush=True)
    stop.wait()
    clean = handle.stop(timeout=10)
    client.close()
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
