"""A worker process for test_rate_limit.py; it runs until it is terminated.

Usage::

    python tests/flow/rate_worker.py URL STREAM LIMIT PER BURST [PARTITIONS]

It consumes ``STREAM`` (group ``g``, jobs with one int field ``n``, like
``tests.helpers.Numbered``) with concurrency 2 and
``rate_limit=RateLimit(LIMIT, per=PER, burst=BURST)``. Each job records its
start as ``RPUSH <STREAM>:starts "<pid> <time.time()>"``; the process says it
runs with ``SADD <STREAM>:ready <pid>``. A URL of a cluster node
(``PARTITIONS`` > 1) is opened as a RedisCluster client.
"""

from __future__ import annotations

import os
import sys
import time

import flowd
from tests.helpers import Numbered, worker_client


def main(argv: list[str]) -> int:
    if len(argv) not in (5, 6):
        print(__doc__, file=sys.stderr)
        return 2
    url, stream, limit, per, burst = argv[:5]
    partitions = int(argv[5]) if len(argv) == 6 else 1
    client = worker_client(url, partitions)
    pid = os.getpid()
    starts = f"{stream}:starts"

    def work(task: flowd.Task[Numbered]) -> None:
        client.rpush(starts, f"{pid} {time.time()}")

    queue = flowd.Queue(
        client,
        stream=stream,
        group="g",
        job=Numbered,
        worker=work,
        concurrency=2,
        partitions=partitions,
        rate_limit=flowd.RateLimit(int(limit), per=float(per), burst=int(burst)),
    )
    handle = queue.run()
    client.sadd(f"{stream}:ready", pid)
    handle.join()  # until terminated
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
