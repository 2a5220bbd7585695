"""The queue that bench_cluster.py runs with `flowd worker ... --processes N`.

Settings come from the environment: FLOWD_REDIS_URL (a redis+cluster:// URL),
BENCH_STREAM and BENCH_PARTITIONS. Each job INCRs a counter in its partition's
own slot, so the counting spreads over the masters like the jobs do.
"""

from __future__ import annotations

import dataclasses
import os

import redis.cluster

import flowd
from flowd._redis.keys import derived_key


@dataclasses.dataclass
class Work(flowd.Job):
    n: int


def make_queue() -> flowd.Queue[Work]:
    url = os.environ["FLOWD_REDIS_URL"].replace("redis+cluster://", "redis://")
    client = redis.cluster.RedisCluster.from_url(url)

    def work(task: flowd.Task[Work]) -> None:
        client.incr(derived_key(task.stream, "done"))

    return flowd.Queue(
        client,
        stream=os.environ["BENCH_STREAM"],
        group="bench",
        job=Work,
        worker=work,
        concurrency=16,
        partitions=int(os.environ["BENCH_PARTITIONS"]),
    )
