"""flowd.contrib.prometheus: scraped over real HTTP on loopback while a real queue works."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import flowd
from flowd.contrib.prometheus import MetricsServer, PrometheusHooks, StreamCollector, serve
from tests.helpers import Numbered, numbered_queue, retry_once_or_give_up, wait_until
from tests.redis_server import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: MetricsServer) -> Samples:
    """GET /metrics and parse the text format into {(name, labels): value}."""
    with urllib.request.urlopen(server.url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[MetricsServer]:
    server = serve(0, registry=registry)
    yield server
    server.close()


def test_job_and_stream_metrics_while_a_queue_processes_jobs(
    client: redis.Redis, stream: str, registry: CollectorRegistry, server: MetricsServer
) -> None:
    # Given an exporter for a queue's hooks and its stream, on a free loopback port
    assert server.url.startswith("http://127.0.0.1:")
    hooks = PrometheusHooks(registry)
    StreamCollector(client, [stream], min_interval=0, registry=registry)
    # And 6 jobs, of which job 0 always fails
    flowd.Producer(client, stream).enqueue_bulk([Numbered(n=i) for i in range(6)])
    release = threading.Event()
    running = threading.Event()

    def work(task: flowd.Task[Numbered]) -> None:
        if task.job.n == 0:
            raise RuntimeError("job 0 always fails")
        if task.job.n == 5:
            running.set()
            assert release.wait(10)

    queue = numbered_queue(
        client,
        stream,
        work,
        concurrency=4,
        claimer=flowd.Claimer(min_idle_time=0.2, max_retries=1, interval=0.05),
        housekeeping=False,
        hooks=[hooks],
    )
    before = scrape(server)
    assert value(before, "flowd_stream_length", stream=stream) == 6
    assert value(before, "flowd_stream_info_up", stream=stream) == 1

    with queue.run() as handle:
        # When job 5 is running, and job 0's retries are over (dead-lettered: otherwise
        # its retry may be in flight too when the scrape comes)
        assert running.wait(10)
        wait_until(lambda: handle.stats().dead_lettered == 1 and handle.stats().in_flight == 1)
        during = scrape(server)
        # Then it is in flight
        assert value(during, "flowd_jobs_in_flight", stream=stream) == 1
        release.set()
        wait_until(lambda: handle.stats().dead_lettered == 1 and handle.stats().processed == 5)
        wait_until(lambda: client.xpending(stream, "g")["pending"] == 0)

    # Then the job counters match the queue's own stats
    stats = handle.stats()
    after = scrape(server)
    assert value(after, "flowd_jobs_processed_total", stream=stream) == stats.processed == 5
    assert value(after, "flowd_jobs_failed_total", stream=stream) == stats.failed == 2
    assert value(after, "flowd_jobs_retried_total", stream=stream) == stats.retried == 1
    assert value(after, "flowd_messages_claimed_total", stream=stream) == 1
    assert value(after, "flowd_jobs_dead_lettered_total", stream=stream) == 1
    assert value(after, "flowd_jobs_in_flight", stream=stream) == 0
    ok_count = value(after, "flowd_job_duration_seconds_count", stream=stream, outcome="success")
    failed_count = value(
        after, "flowd_job_duration_seconds_count", stream=stream, outcome="failure"
    )
    assert (ok_count, failed_count) == (5, 2)
    slow = value(
        after, "flowd_job_duration_seconds_bucket", stream=stream, outcome="success", le="+Inf"
    )
    assert slow == 5
    # And the stream gauges describe the group and the dead letters
    group = {"stream": stream, "group": "g"}
    assert value(after, "flowd_group_pending", **group) == 0
    assert value(after, "flowd_group_lag", **group) == 0
    assert value(after, "flowd_group_consumers", **group) == 1
    assert value(after, "flowd_group_oldest_pending_age_seconds", **group) == 0
    assert value(after, "flowd_stream_dead_letters", stream=stream) == 1


def test_stream_gauges_are_sampled_at_most_every_min_interval(
    client: redis.Redis, stream: str, registry: CollectorRegistry, server: MetricsServer
) -> None:
    # Given a collector registered in a registry that describes collectors on registration
    collector = StreamCollector(client, [stream], min_interval=60, registry=registry)
    # Then registering read nothing from Redis
    assert collector.readings == 0
    client.xgroup_create(stream, "late", id="0", mkstream=True)
    client.xadd(stream, {"n": "1"})

    # When it is scraped twice, with more entries between the scrapes
    first = scrape(server)
    client.xadd(stream, {"n": "2"})
    second = scrape(server)

    # Then the second scrape reused the first reading
    assert collector.readings == 1
    assert value(first, "flowd_stream_length", stream=stream) == 1
    assert value(second, "flowd_stream_length", stream=stream) == 1
    assert value(second, "flowd_group_lag", stream=stream, group="late") == 1

    # And a collector without caching reads each time
    fresh = StreamCollector(client, [stream], min_interval=0, registry=None, namespace="fresh")
    registry.register(fresh)
    assert value(scrape(server), "fresh_group_lag", stream=stream, group="late") == 2
    assert value(scrape(server), "fresh_stream_length", stream=stream) == 2
    assert fresh.readings == 2


def test_an_unreachable_redis_reads_as_down_and_the_scrape_still_works(
    registry: CollectorRegistry, server: MetricsServer, caplog: pytest.LogCaptureFixture
) -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    try:
        StreamCollector(dead, ["emails"], min_interval=0, registry=registry)
        samples = scrape(server)
    finally:
        dead.close()
    assert value(samples, "flowd_stream_info_up", stream="emails") == 0
    assert value(samples, "flowd_stream_length", stream="emails") is None
    assert "cannot read stream emails for metrics" in caplog.text


def test_retry_and_give_up_are_counted_and_leave_nothing_in_flight(
    client: redis.Redis, stream: str, registry: CollectorRegistry, server: MetricsServer
) -> None:
    # Given a queue whose job 1 asks for one retry and whose job 2 gives up
    hooks = PrometheusHooks(registry)
    flowd.Producer(client, stream).enqueue_bulk([Numbered(n=i) for i in range(3)])

    queue = numbered_queue(
        client,
        stream,
        retry_once_or_give_up,
        claimer=flowd.Claimer(min_idle_time=5, interval=0.05),
        housekeeping=False,
        hooks=[hooks],
    )
    # When it has run them all
    with queue.run() as handle:
        wait_until(lambda: handle.stats().processed == 2 and handle.stats().dead_lettered == 1)
    stats = handle.stats()
    after = scrape(server)

    # Then the retry and the give-up are counted apart from failures, as in the stats
    assert value(after, "flowd_jobs_retry_requested_total", stream=stream) == 1
    assert stats.retry_requested == 1
    assert value(after, "flowd_jobs_gave_up_total", stream=stream) == stats.gave_up == 1
    assert value(after, "flowd_jobs_failed_total", stream=stream) == stats.failed == 0
    assert value(after, "flowd_jobs_dead_lettered_total", stream=stream) == 1
    # And no run stays in flight
    assert value(after, "flowd_jobs_in_flight", stream=stream) == 0
    durations = {
        outcome: value(after, "flowd_job_duration_seconds_count", stream=stream, outcome=outcome)
        for outcome in ("success", "retry", "give_up")
    }
    assert durations == {"success": 2, "retry": 1, "give_up": 1}


def test_hooks_share_their_metrics_per_registry(registry: CollectorRegistry) -> None:
    # Creating one PrometheusHooks per queue is fine: the metrics exist once.
    first, second = PrometheusHooks(registry), PrometheusHooks(registry)
    assert first.metrics is second.metrics
    assert PrometheusHooks(CollectorRegistry()).metrics is not first.metrics
    with pytest.raises(flowd.ConfigurationError, match="buckets"):
        PrometheusHooks(registry, buckets=(1.0, 2.0))
    with pytest.raises(flowd.ConfigurationError, match="streams"):
        StreamCollector(None, [], registry=None)
