"""The results tests run twice: on one Redis, and on a 3-master cluster with the queue
in 3 partitions (one per master). These fixtures override the suite's ``client``,
``producer`` and ``make_queue`` for that, and add ``results`` and ``records``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.cluster

import flowd
from flowd._redis.keys import alias_key, partition_streams, result_buckets_key, result_key
from tests.helpers import GROUP, Numbered, QueueFactory, wait_until

#: Partitions of the queue on the cluster (one per master).
CLUSTER_PARTITIONS = 3


@pytest.fixture(params=["redis", "cluster"])
def partitions(request: pytest.FixtureRequest) -> int:
    return 1 if request.param == "redis" else CLUSTER_PARTITIONS


@pytest.fixture
def client(request: pytest.FixtureRequest, partitions: int, redis_url: str) -> Iterator[Any]:
    if partitions == 1:
        made: Any = redis.Redis.from_url(redis_url)
    else:
        made = request.getfixturevalue("cluster").client()
    yield made
    made.close()


@pytest.fixture
def producer(client: Any, stream: str, partitions: int) -> flowd.Producer:
    return flowd.Producer(client, stream, partitions=partitions)


@pytest.fixture
def results(client: Any, stream: str, partitions: int) -> flowd.Results:
    return flowd.Results(client, stream, partitions=partitions)


class PartitionedQueues(QueueFactory):
    """Queues of the test's stream in the test's partitions."""

    def __init__(self, client: Any, stream: str, partitions: int) -> None:
        super().__init__(client, stream)
        self.partitions = partitions

    def __call__(self, *args: Any, **kwargs: Any) -> flowd.Queue[Any]:
        kwargs.setdefault("partitions", self.partitions)
        return super().__call__(*args, **kwargs)


@pytest.fixture
def make_queue(client: Any, stream: str, partitions: int) -> Iterator[QueueFactory]:
    factory = PartitionedQueues(client, stream, partitions)
    yield factory
    factory.stop_all()


class Records:
    """The record keys and pending counts of the test's queue, over its partitions."""

    def __init__(self, client: Any, stream: str, partitions: int) -> None:
        self.client = client
        self.streams = partition_streams(stream, partitions)

    def holders(self, job_id: str) -> list[str]:
        """The keys that hold ``job_id``'s record: its string (a dead, failed or cancelled
        job's), or the buckets of successes' records that have it."""
        found = []
        for s in self.streams:
            if self.client.exists(result_key(s, job_id)):
                found.append(result_key(s, job_id))
            for bucket in self.client.zrange(result_buckets_key(s), 0, -1):
                if self.client.hexists(bucket, job_id):
                    found.append(bucket.decode() if isinstance(bucket, bytes) else bucket)
        return found

    def exists(self, job_id: str) -> bool:
        return bool(self.holders(job_id))

    def pttl(self, job_id: str) -> int:
        """Milliseconds until the job's record expires (one holder must have it)."""
        (key,) = self.holders(job_id)
        return int(self.client.pttl(key))

    def delete_entry(self, job_id: str) -> None:
        """XDEL the job's entry, from whichever partition holds it."""
        for s in self.streams:
            self.client.xdel(s, job_id)

    def alias(self, job_id: str) -> str | None:
        """The id ``job_id`` names now (its alias), from whichever partition holds it."""
        for s in self.streams:
            value = self.client.get(alias_key(s, job_id))
            if value is not None:
                return str(value.decode() if isinstance(value, bytes) else value)
        return None

    def pending(self) -> int:
        total = 0
        for s in self.streams:
            try:
                total += int(self.client.xpending(s, GROUP)["pending"])
            except redis.exceptions.ResponseError:  # no group yet
                pass
        return total


@pytest.fixture
def records(client: Any, stream: str, partitions: int) -> Records:
    return Records(client, stream, partitions)


class JobRunner:
    """Runs a queue on the test's stream and follows its jobs through ``Results``."""

    def __init__(
        self, make_queue: QueueFactory, producer: flowd.Producer, results: flowd.Results
    ) -> None:
        self.make_queue = make_queue
        self.producer = producer
        self.results = results

    def start(self, worker: Any, **queue: Any) -> flowd.QueueHandle:
        """Run a queue of ``worker`` (Queue keywords in ``queue``)."""
        return self.make_queue.run(self.make_queue(worker, **queue))

    def run(
        self, worker: Any, n: int = 1, *, timeout: float = 20.0, type: Any = None, **queue: Any
    ) -> tuple[str, flowd.JobResult]:
        """Run a queue, enqueue ``Numbered(n)`` and wait for it: its id and result."""
        self.start(worker, **queue)
        job_id = self.producer.enqueue(Numbered(n))
        return job_id, self.results.wait(job_id, timeout=timeout, type=type)

    def reaches(self, job_id: str, status: flowd.JobStatus) -> flowd.JobResult:
        """Wait until the job's status is ``status``; its result then."""
        found: flowd.JobResult = wait_until(
            lambda: (r := self.results.get(job_id)) is not None and r.status is status and r,
            message=f"{job_id} reaches {status}",
        )
        return found


@pytest.fixture
def jobs(make_queue: QueueFactory, producer: flowd.Producer, results: flowd.Results) -> JobRunner:
    return JobRunner(make_queue, producer, results)
