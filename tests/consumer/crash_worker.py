"""A worker process for the crash test in test_claimer.py; it runs until it is killed.

Usage::

    python tests/consumer/crash_worker.py URL STREAM GROUP CONSUMER [SECONDS_PER_JOB [FAST_BELOW]]

It consumes ``STREAM`` as ``CONSUMER`` of ``GROUP`` (jobs with one int field
``n``, like ``tests.helpers.Numbered``) with concurrency 4, and takes
``SECONDS_PER_JOB`` (default 1.0) per job; jobs with ``n < FAST_BELOW``
(default 0) take no time, so that it reads ahead once it has run a few.
Each job records itself in Redis:
``SADD <STREAM>:started n`` when it starts, ``INCR <STREAM>:runs:<n>`` and
``SADD <STREAM>:done n`` when it finishes. The test kills it with SIGKILL.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import redis

import flowd


@dataclass
class Numbered(flowd.Job):
    n: int


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5, 6):
        print(__doc__, file=sys.stderr)
        return 2
    url, stream, group, consumer = argv[:4]
    seconds = float(argv[4]) if len(argv) >= 5 else 1.0
    fast_below = int(argv[5]) if len(argv) == 6 else 0
    client = redis.Redis.from_url(url)

    def work(task: flowd.Task[Numbered]) -> None:
        n = task.job.n
        client.sadd(f"{stream}:started", n)
        if n >= fast_below:
            time.sleep(seconds)
        client.incr(f"{stream}:runs:{n}")
        client.sadd(f"{stream}:done", n)

    queue = flowd.Queue(
        client,
        stream=stream,
        group=group,
        job=Numbered,
        worker=work,
        concurrency=4,
        consumer=consumer,
        # Its own claimer never gets to claim here (min_idle_time is long), but
        # its lease thread runs, as in production.
        claimer=flowd.Claimer(min_idle_time=60.0),
    )
    handle = queue.run()
    handle.join()  # until SIGKILL
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
