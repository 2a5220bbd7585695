"""A worker process for test_priorities.py; it runs until it is terminated.

Usage::

    python tests/flow/priority_worker.py URL STREAM [PARTITIONS]

It consumes ``STREAM`` (group ``g``, jobs with one int field ``n``, like
``tests.helpers.Numbered``) with concurrency 2; each job records its start as
``RPUSH <STREAM>:starts <n>``, then sleeps 10 ms. The process says it runs
with ``SADD <STREAM>:ready <pid>``. A URL of a cluster node (``PARTITIONS`` > 1)
is opened as a RedisCluster client.
"""

from __future__ import annotations

import os
import sys
import time

import flowd
from tests.helpers import Numbered, worker_client


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    url, stream = argv[:2]
    partitions = int(argv[2]) if len(argv) == 3 else 1
    client = worker_client(url, partitions)
    starts = f"{stream}:starts"

    def work(task: flowd.Task[Numbered]) -> None:
        client.rpush(starts, task.job.n)
        time.sleep(0.01)

    queue = flowd.Queue(
        client,
        stream=stream,
        group="g",
        job=Numbered,
        worker=work,
        concurrency=2,
        partitions=partitions,
    )
    handle = queue.run()
    client.sadd(f"{stream}:ready", os.getpid())
    handle.join()  # until terminated
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
