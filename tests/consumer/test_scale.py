"""Scale-out: partitioned queues, Redis Cluster (with a live slot migration), Sentinel
failover and durable enqueue, each against real servers built by the fixtures."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.cluster

import flowd
from flowd._redis.keys import key_slot
from tests.helpers import Numbered, numbered_queue, wait_until
from tests.redis_cluster import RedisCluster
from tests.redis_sentinel import SentinelSetup
from tests.redis_server import RedisServer

WAIT = 60.0


@pytest.fixture
def cluster_client(cluster: RedisCluster) -> Iterator[redis.cluster.RedisCluster]:
    client = cluster.client()
    yield client
    client.close()


class Runs:
    """Thread-safe record of which jobs ran, how often, on which stream."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count: dict[int, int] = {}
        self.streams: dict[int, str] = {}

    def add(self, task: flowd.Task[Numbered]) -> None:
        with self.lock:
            self.count[task.job.n] = self.count.get(task.job.n, 0) + 1
            self.streams[task.job.n] = task.stream

    def done(self) -> set[int]:
        with self.lock:
            return set(self.count)

    def duplicates(self) -> int:
        with self.lock:
            return sum(self.count.values()) - len(self.count)


def _account(label: str, jobs: int, runs: Runs, dead: int, pending: int) -> None:
    print(
        f"\naccount[{label}]: enqueued={jobs} succeeded={len(runs.done())} dlq={dead} "
        f"duplicates={runs.duplicates()} pending={pending}"
    )


def _pending(client: Any, streams: list[str], group: str) -> int:
    return sum(int(client.xpending(s, group)["pending"]) for s in streams)


# -- partitions on one Redis


def test_partitions_spread_jobs_and_one_queue_reads_them_all(
    client: redis.Redis, stream: str
) -> None:
    # Given a producer and a queue over 3 partitions
    producer = flowd.Producer(client, stream, partitions=3)
    assert len(set(producer.streams)) == 3
    producer.enqueue_bulk(Numbered(n) for n in range(300))
    # Then round-robin put 100 jobs on each partition
    assert [client.xlen(s) for s in producer.streams] == [100, 100, 100]
    runs = Runs()
    queue = numbered_queue(client, stream, runs.add, partitions=3, concurrency=4, claimer=None)
    assert queue.streams == producer.streams
    handle = queue.run()
    try:
        # When it runs, every job of every partition runs once
        wait_until(lambda: runs.done() == set(range(300)), timeout=WAIT)
    finally:
        assert handle.stop(timeout=5)
    assert runs.duplicates() == 0
    assert set(runs.streams.values()) == set(producer.streams)
    assert _pending(client, producer.streams, "g") == 0


def test_a_key_function_keeps_related_jobs_in_order(client: redis.Redis, stream: str) -> None:
    # Given jobs keyed by n % 5, over 4 partitions
    producer = flowd.Producer(client, stream, partitions=4, key=lambda job: job.n % 5)
    producer.enqueue_bulk(Numbered(n) for n in range(200))
    # Then all jobs of one key are on one partition, in enqueue order
    for key in range(5):
        homes = [
            s for s in producer.streams if any(int(f[b"n"]) % 5 == key for _, f in client.xrange(s))
        ]
        assert len(homes) == 1
        ns = [int(f[b"n"]) for _, f in client.xrange(homes[0]) if int(f[b"n"]) % 5 == key]
        assert ns == sorted(ns)


def test_one_partition_is_the_plain_stream(client: redis.Redis, stream: str) -> None:
    assert flowd.partition_streams(stream, 1) == [stream]
    assert flowd.Producer(client, stream).streams == [stream]
    with pytest.raises(flowd.ConfigurationError):
        flowd.partition_streams(stream, 0)
    with pytest.raises(flowd.ConfigurationError):
        flowd.partition_streams("a{b}", 3)


def test_partitions_land_on_different_masters(cluster_client: redis.cluster.RedisCluster) -> None:
    streams = flowd.partition_streams("orders", 3)
    owners = {cluster_client.get_node_from_key(s).name for s in streams}
    assert len(owners) == 3
    for s in streams:  # every derived key shares its partition's slot
        assert key_slot(flowd._redis.keys.dead_letter_stream(s)) == key_slot(s)


# -- the core scenarios on a 3-master cluster, partitioned P=3


def test_cluster_processes_everything(
    cluster_client: redis.cluster.RedisCluster, stream: str
) -> None:
    producer = flowd.Producer(cluster_client, stream, partitions=3)
    producer.enqueue_bulk(Numbered(n) for n in range(1500))
    runs = Runs()
    queue = numbered_queue(
        cluster_client,
        stream,
        runs.add,
        partitions=3,
        concurrency=16,
        claimer=flowd.Claimer(min_idle_time=1.0, interval=0.2),
        housekeeping=flowd.Housekeeping(interval=0.5),
    )
    handle = queue.run()
    try:
        wait_until(lambda: runs.done() == set(range(1500)), timeout=WAIT)
    finally:
        assert handle.stop(timeout=10)
    pending = _pending(cluster_client, producer.streams, "g")
    _account("cluster", 1500, runs, 0, pending)
    assert runs.duplicates() == 0 and pending == 0
    info = [flowd.stream_info(cluster_client, s, group="g") for s in producer.streams]
    assert all(i.groups[0].pending == 0 and i.groups[0].lag == 0 for i in info)


def test_cluster_retries_to_the_dead_letter_streams(
    cluster_client: redis.cluster.RedisCluster, stream: str
) -> None:
    producer = flowd.Producer(cluster_client, stream, partitions=3)
    producer.enqueue_bulk(Numbered(n) for n in range(30))
    attempts: dict[int, int] = {}
    lock = threading.Lock()

    def always_fail(task: flowd.Task[Numbered]) -> None:
        with lock:
            attempts[task.job.n] = attempts.get(task.job.n, 0) + 1
        raise RuntimeError(f"boom {task.job.n}")

    queue = numbered_queue(
        cluster_client,
        stream,
        always_fail,
        partitions=3,
        concurrency=8,
        claimer=flowd.Claimer(min_idle_time=0.2, max_retries=2, interval=0.05),
    )
    handle = queue.run()
    dead = [flowd.DeadLetters(cluster_client, s) for s in producer.streams]
    try:
        wait_until(lambda: sum(d.count() for d in dead) == 30, timeout=WAIT)
    finally:
        assert handle.stop(timeout=10)
    assert attempts == {n: 3 for n in range(30)}
    reasons = [e.reason for d in dead for e in d.list()]
    assert sorted(reasons) == sorted(f"RuntimeError: boom {n}" for n in range(30))
    assert _pending(cluster_client, producer.streams, "g") == 0
    # and the requeue tool works per partition, within each partition's slot
    assert sum(d.requeue_all() for d in dead) == 30
    assert sum(cluster_client.xlen(s) for s in producer.streams) == 60


def test_cluster_claims_from_a_dead_consumer(
    cluster_client: redis.cluster.RedisCluster, stream: str
) -> None:
    producer = flowd.Producer(cluster_client, stream, partitions=3)
    producer.enqueue_bulk(Numbered(n) for n in range(60))
    for s in producer.streams:  # a consumer reads everything, then dies
        cluster_client.xgroup_create(s, "g", id="0")
        cluster_client.xreadgroup("g", "dead-one", {s: ">"}, count=100)
    runs = Runs()
    deliveries: list[int] = []

    def work(task: flowd.Task[Numbered]) -> None:
        deliveries.append(task.deliveries)
        runs.add(task)

    queue = numbered_queue(
        cluster_client,
        stream,
        work,
        partitions=3,
        claimer=flowd.Claimer(min_idle_time=0.3, interval=0.05),
    )
    handle = queue.run()
    try:
        wait_until(lambda: runs.done() == set(range(60)), timeout=WAIT)
    finally:
        assert handle.stop(timeout=10)
    assert min(deliveries) >= 2
    assert _pending(cluster_client, producer.streams, "g") == 0


def test_a_slot_migration_during_processing_loses_nothing(
    cluster: RedisCluster, cluster_client: redis.cluster.RedisCluster, stream: str
) -> None:
    # Given a partitioned queue working through 3,000 jobs of 2 ms
    producer = flowd.Producer(cluster_client, stream, partitions=3)
    producer.enqueue_bulk(Numbered(n) for n in range(3000))
    runs = Runs()

    def work(task: flowd.Task[Numbered]) -> None:
        time.sleep(0.002)
        runs.add(task)

    queue = numbered_queue(
        cluster_client,
        stream,
        work,
        partitions=3,
        concurrency=8,
        claimer=flowd.Claimer(min_idle_time=1.0, interval=0.1),
    )
    handle = queue.run()
    try:
        wait_until(lambda: len(runs.done()) > 300, timeout=WAIT)
        # When partition 0's slot (its stream, DLQ and all) moves to another master
        moved = producer.streams[0]
        _migrate_slot(cluster, key_slot(moved))
        # Then every job still runs
        wait_until(lambda: runs.done() == set(range(3000)), timeout=WAIT)
        wait_until(lambda: _pending(cluster_client, producer.streams, "g") == 0, timeout=WAIT)
    finally:
        assert handle.stop(timeout=10)
    _account("slot migration", 3000, runs, 0, _pending(cluster_client, producer.streams, "g"))


def _migrate_slot(cluster: RedisCluster, slot: int) -> None:
    """CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE the keys, SETSLOT NODE everywhere."""
    clients = [redis.Redis(host="127.0.0.1", port=n.port) for n in cluster.nodes]
    try:
        ids = [c.execute_command("CLUSTER", "MYID").decode() for c in clients]
        source = next(i for i, c in enumerate(clients) if slot in _owned_slots(c, ids[i]))
        target = (source + 1) % len(clients)
        clients[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        clients[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        while keys := clients[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            clients[source].execute_command(
                "MIGRATE", "127.0.0.1", cluster.nodes[target].port, "", 0, 5000, "KEYS", *keys
            )
        for c in clients:
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    finally:
        for c in clients:
            c.close()


def _owned_slots(client: redis.Redis, node_id: str) -> set[int]:
    owned: set[int] = set()
    for start, end, *nodes in client.execute_command("CLUSTER", "SLOTS"):
        master_id = nodes[0][2].decode() if len(nodes[0]) > 2 else ""
        if master_id == node_id:
            owned.update(range(int(start), int(end) + 1))
    return owned


# -- Sentinel failover and durable enqueue


@pytest.fixture
def sentinel_setup() -> Iterator[SentinelSetup]:
    setup = SentinelSetup()
    try:
        setup.start()
        yield setup
    finally:
        setup.close()


def test_sentinel_failover_mid_run(
    sentinel_setup: SentinelSetup, client: redis.Redis, stream: str
) -> None:
    # Given 2,000 jobs enqueued durably (each on the replica too) through Sentinel
    master = sentinel_setup.master_client(socket_timeout=1.0)
    producer = flowd.Producer(master, stream, replicas=1, replica_timeout=5)
    producer.enqueue_bulk(Numbered(n) for n in range(2000))
    done_key = f"{stream}:done"
    runs = Runs()

    def work(task: flowd.Task[Numbered]) -> None:
        time.sleep(0.001)
        runs.add(task)
        client.sadd(done_key, task.job.n)  # recorded on another server: survives the failover

    queue = numbered_queue(
        master, stream, work, concurrency=8, claimer=flowd.Claimer(min_idle_time=1.0, interval=0.2)
    )
    handle = queue.run()
    try:
        wait_until(lambda: len(runs.done()) > 300, timeout=WAIT)
        # When the master is killed and the sentinels promote the replica
        old_port = sentinel_setup.master.port
        sentinel_setup.master.stop(kill=True)
        sentinel = sentinel_setup.sentinel(socket_timeout=1.0)
        wait_until(lambda: _master_port(sentinel) != old_port, timeout=WAIT)
        # Then every job is processed (or dead-lettered) on the new master
        wait_until(lambda: runs.done() == set(range(2000)), timeout=WAIT)
        wait_until(lambda: _pending(master, [stream], "g") == 0, timeout=WAIT)
    finally:
        assert handle.stop(timeout=10)
    dead = flowd.DeadLetters(master, stream).count()
    _account("sentinel failover", 2000, runs, dead, _pending(master, [stream], "g"))
    assert client.scard(done_key) == 2000
    master.close()


def _master_port(sentinel: Any) -> int | None:
    try:
        return int(sentinel.discover_master("flowd-test")[1])
    except redis.exceptions.RedisError:
        return None


def test_durable_enqueue_waits_for_replicas(sentinel_setup: SentinelSetup, stream: str) -> None:
    master = sentinel_setup.master_client()
    try:
        producer = flowd.Producer(master, stream, replicas=1, replica_timeout=5)
        # One job and a bulk, each confirmed by the replica
        first = producer.enqueue(Numbered(1))
        ids = producer.enqueue_bulk(Numbered(n) for n in range(50))
        assert len(ids) == 50 and first < ids[0]
        assert sentinel_setup.replica is not None
        replica = redis.Redis(host="127.0.0.1", port=sentinel_setup.replica.port)
        assert replica.xlen(stream) == 51
        replica.close()
    finally:
        master.close()


def test_durable_enqueue_without_enough_replicas_raises(stream: str) -> None:
    # Given a lone server (no replica) and a producer that wants one replica
    server = RedisServer()
    try:
        server.start()
        lone = redis.Redis.from_url(server.url)
        producer = flowd.Producer(lone, stream, replicas=1, replica_timeout=0.2)
        # Then enqueue raises a clear error naming what was asked, and the job is on the master
        with pytest.raises(flowd.ReplicationError, match="only 0 of 1 replicas") as info:
            producer.enqueue(Numbered(1))
        assert len(info.value.ids) == 1 and lone.xlen(stream) == 1
        with pytest.raises(flowd.ReplicationError):
            producer.enqueue_bulk([Numbered(2), Numbered(3)])
        lone.close()
    finally:
        server.close()


def test_cli_info_and_dlq_take_a_cluster_url(
    cluster: RedisCluster, cluster_client: redis.cluster.RedisCluster, stream: str
) -> None:
    import subprocess
    import sys

    flowd.Producer(cluster_client, stream).enqueue_bulk(Numbered(n) for n in range(5))
    url = cluster.url.replace("redis://", "redis+cluster://")
    result = subprocess.run(
        [sys.executable, "-m", "flowd", "info", stream, "--json", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"length": 5' in result.stdout
