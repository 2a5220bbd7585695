"""What flowd says when Redis can lose jobs, and reasons that say what happened.

An eviction policy that can drop streams is reported at start; a group that
vanishes under a running queue is reported as lost data and counted.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

import flowd
from flowd._consumer.group_loss import CHECK_EVERY
from tests.cli.test_cli_tools import flowd_cmd
from tests.helpers import Numbered, numbered_queue, running_server, wait_until
from tests.redis_server import RedisServer


@pytest.fixture
def evicting_server() -> Iterator[RedisServer]:
    """A private server that may evict any key, streams included."""
    with running_server(
        extra_args=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    ) as server:
        yield server


def _queue(client: redis.Redis, stream: str, worker=lambda task: None) -> flowd.Queue[Numbered]:
    return numbered_queue(
        client,
        stream,
        worker,
        claimer=flowd.Claimer(min_idle_time=0.2, max_retries=0, interval=0.05),
        block=0.2,
    )


def test_an_evicting_policy_is_an_error_at_start(
    evicting_server: RedisServer, stream: str, caplog: pytest.LogCaptureFixture
):
    # Given a server with maxmemory-policy allkeys-lru
    client = redis.Redis.from_url(evicting_server.url)
    try:
        # When a queue starts
        with caplog.at_level(logging.ERROR, logger="flowd"):
            handle = _queue(client, stream).run()
            assert handle.stop(5)
        # Then one ERROR names the policy and the risk
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, errors
        assert "allkeys-lru" in errors[0] and "lost" in errors[0]
        # and stream_info and `flowd info` show it
        info = flowd.stream_info(client, stream)
        assert info.eviction_policy == "allkeys-lru"
        assert info.eviction_unsafe
        assert info.to_dict()["eviction_policy"] == "allkeys-lru"
        printed = flowd_cmd("info", stream, url=evicting_server.url)
        assert "maxmemory-policy is allkeys-lru" in printed.stdout
    finally:
        client.close()


def test_noeviction_is_quiet(client: redis.Redis, stream: str, caplog: pytest.LogCaptureFixture):
    # Given the test server (noeviction, Redis's default)
    with caplog.at_level(logging.ERROR, logger="flowd"):
        handle = _queue(client, stream).run()
        assert handle.stop(5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert flowd.stream_info(client, stream).eviction_policy == "noeviction"
    assert not flowd.stream_info(client, stream).eviction_unsafe


def test_a_deleted_stream_is_reported_as_lost_data(
    client: redis.Redis, stream: str, caplog: pytest.LogCaptureFixture
):
    # Given a running queue that has processed a job
    ran: list[int] = []
    handle = _queue(client, stream, lambda task: ran.append(task.job.n)).run()
    producer = flowd.Producer(client, stream=stream)
    try:
        producer.enqueue(Numbered(1))
        wait_until(lambda: ran == [1])
        # When the stream is deleted under it (as eviction or FLUSHALL would)
        with caplog.at_level(logging.ERROR, logger="flowd"):
            client.delete(stream)
            wait_until(lambda: handle.stats().groups_lost >= 1)
            # Then the queue goes on: a new job runs
            producer.enqueue(Numbered(2))
            wait_until(lambda: ran == [1, 2])
    finally:
        assert handle.stop(5)
    # and the loss was reported as such, once, and counted
    lost = [r.getMessage() for r in caplog.records if "vanished" in r.getMessage()]
    assert len(lost) == 1, lost
    assert "lost" in lost[0] and stream in lost[0]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == lost
    assert handle.stats().groups_lost == 1


def test_every_running_worker_reports_a_lost_group_once(
    client: redis.Redis, stream: str, caplog: pytest.LogCaptureFixture
):
    # Given two running workers of one group (two consumers, as two processes would be)
    ran: dict[str, list[int]] = {"a": [], "b": []}

    def worker_of(name: str) -> Callable[[flowd.Task[Numbered]], None]:
        return lambda task: ran[name].append(task.job.n)

    handles = [_queue(client, stream, worker_of(name)).run() for name in ran]
    producer = flowd.Producer(client, stream=stream)
    try:
        # (each has read a job: Redis serves blocked readers in turn)
        for n in range(100):
            if all(ran.values()):
                break
            producer.enqueue(Numbered(n))
            wait_until(lambda: sum(map(len, ran.values())) == n + 1)  # noqa: B023
        assert all(ran.values()), ran
        done = sum(map(len, ran.values()))
        # When the stream is deleted under them: one recreates the group; the other finds
        # it there after its own NOGROUP (BUSYGROUP), or on Redis 6.2 its blocked read
        # never sees NOGROUP and it finds a group whose last-delivered id went back
        with caplog.at_level(logging.ERROR, logger="flowd"):
            client.delete(stream)
            wait_until(lambda: all(h.stats().groups_lost >= 1 for h in handles), timeout=15)
            producer.enqueue(Numbered(-1))
            wait_until(lambda: sum(map(len, ran.values())) == done + 1)
            time.sleep(2 * CHECK_EVERY)  # idle reads that would report it again
    finally:
        for handle in handles:
            assert handle.stop(5)
    # Then each of them reported the loss at ERROR, once
    lost = [r for r in caplog.records if "vanished" in r.getMessage()]
    assert len(lost) == 2, [r.getMessage() for r in lost]
    assert all(r.levelno == logging.ERROR for r in lost)
    assert [h.stats().groups_lost for h in handles] == [1, 1]


@dataclass
class Exits(flowd.Job):
    how: str


def _exit_worker(task: flowd.Task[Exits]) -> None:
    if task.job.how == "exit":
        sys.exit(3)
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("exit", "SystemExit: the job called sys.exit(3)"),
        ("interrupt", "KeyboardInterrupt: the job was interrupted (SIGINT / Ctrl-C while it ran)"),
    ],
)
def test_exit_and_interrupt_reasons_say_what_happened(
    client: redis.Redis, stream: str, how: str, reason: str
):
    # Given a job that calls sys.exit() or raises KeyboardInterrupt, and no retries
    flowd.Producer(client, stream=stream).enqueue(Exits(how))
    queue = numbered_queue(
        client,
        stream,
        _exit_worker,
        job=Exits,
        claimer=flowd.Claimer(min_idle_time=0.1, max_retries=0, interval=0.05),
    )
    dead = flowd.DeadLetters(client, stream)
    handle = queue.run()
    try:
        # When it is dead-lettered
        wait_until(lambda: dead.list())
    finally:
        assert handle.stop(5)
    # Then its reason says what happened, not a bare "SystemExit: "
    assert dead.list()[0].reason == reason


def test_dlq_list_truncates_huge_fields(redis_url: str, client: redis.Redis, stream: str):
    # Given a dead letter with a 5 MB field
    dead = flowd.DeadLetters(client, stream)
    client.xadd(dead.dlq_stream, {"payload": "x" * 5_000_000, "flowd:reason": "too big"})
    # When `flowd dlq list` prints it
    printed = flowd_cmd("dlq", "list", stream, url=redis_url)
    # Then the field is cut, with its full size said
    assert printed.returncode == 0, printed.stderr
    assert len(printed.stdout) < 5000
    assert "5,000,000 characters in all" in printed.stdout


def test_failure_records_survive_a_small_application_pool(
    redis_url: str, client: redis.Redis, stream: str
):
    # Given an application client limited to 5 connections, and jobs at concurrency 16
    # that use it to enqueue children before failing (the test watches with its own client)
    small = redis.Redis.from_url(redis_url, max_connections=5)
    children = flowd.Producer(small, stream=f"{stream}-children")
    flowd.Producer(small, stream=stream).enqueue_bulk(Numbered(n) for n in range(64))

    def work(task: flowd.Task[Numbered]) -> None:
        try:
            children.enqueue(Numbered(task.job.n))
        except redis.ConnectionError:
            pass  # the application's pool is exhausted: the application's own problem
        raise RuntimeError(f"failure {task.job.n}")

    queue = numbered_queue(
        small,
        stream,
        work,
        concurrency=16,
        claimer=flowd.Claimer(min_idle_time=0.3, max_retries=0, interval=0.05),
    )
    dead = flowd.DeadLetters(client, stream)
    handle = queue.run()
    try:
        # When every job has failed and been dead-lettered
        wait_until(lambda: client.xlen(dead.dlq_stream) == 64, timeout=60)
    finally:
        assert handle.stop(10)
        small.close()
    # Then flowd's own bookkeeping did not compete for the application's pool:
    # every dead letter carries its real failure
    reasons = sorted(entry.reason for entry in dead.list(limit=100))
    assert reasons == sorted(f"RuntimeError: failure {n}" for n in range(64))
