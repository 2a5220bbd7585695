"""Prometheus metrics for flowd: job counters as hooks, stream gauges, an HTTP exporter.

::

    from flowd.contrib.prometheus import PrometheusHooks, StreamCollector, serve

    queue = flowd.Queue(client, ..., hooks=[PrometheusHooks()])
    StreamCollector(client, ["emails"])      # lag, pending, dead letters per scrape
    serve(9108)                              # http://127.0.0.1:9108/metrics

Job metrics, labelled by ``stream``, come from the queue's hooks, so they
cost a few counter increments per job:

- ``flowd_jobs_processed_total``, ``flowd_jobs_failed_total``: runs that
  returned / raised;
- ``flowd_jobs_retry_requested_total``, ``flowd_jobs_gave_up_total``: runs
  that raised :class:`flowd.Retry` / :class:`flowd.GiveUp` (as
  ``QueueStats.retry_requested`` and ``gave_up``; not counted as failed);
- ``flowd_jobs_retried_total``: runs of a message delivered before (as
  ``QueueStats.retried``); ``flowd_messages_claimed_total``: messages
  reclaimed from an idle consumer (a failed job or a crashed consumer);
- ``flowd_jobs_dead_lettered_total``: messages sent down the dead-letter path;
  ``flowd_jobs_expired_total``: jobs not run because their deadline
  (``enqueue(expires=...)``) passed first (as ``QueueStats.expired``; those
  dead-lettered count as dead-lettered too);
- ``flowd_job_duration_seconds`` (histogram, also labelled ``outcome``:
  ``success``, ``failure``, ``retry`` or ``give_up``) and
  ``flowd_jobs_in_flight`` (gauge).

Stream metrics come from :func:`flowd.stream_info`, read at most every
``min_interval`` seconds whatever the scrape rate (:class:`StreamCollector`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from ..errors import ConfigurationError, GiveUp, Retry
from ..hooks import Hooks
from ..info import StreamInfo, stream_info
from ..task import Task

__all__ = ["MetricsServer", "PrometheusHooks", "StreamCollector", "serve"]

logger = logging.getLogger(__name__)

#: Job duration buckets, in seconds: from 5 ms to 10 minutes.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)


@dataclass(frozen=True)
class _JobMetrics:
    processed: Counter
    failed: Counter
    retry_requested: Counter
    gave_up: Counter
    retried: Counter
    claimed: Counter
    dead_lettered: Counter
    expired: Counter
    duration: Histogram
    in_flight: Gauge
    buckets: tuple[float, ...]


_metrics_lock = threading.Lock()
_metrics: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _JobMetrics]] = (
    weakref.WeakKeyDictionary()
)


def _job_metrics(
    registry: CollectorRegistry, namespace: str, buckets: tuple[float, ...]
) -> _JobMetrics:
    """The job metrics of ``namespace`` in ``registry``, created once per registry."""
    with _metrics_lock:
        known = _metrics.setdefault(registry, {})
        found = known.get(namespace)
        if found is not None:
            if found.buckets != buckets:
                raise ConfigurationError(
                    f"{namespace}_job_duration_seconds already exists in this registry with "
                    f"buckets {found.buckets}"
                )
            return found

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["stream"], namespace=namespace, registry=registry)

        found = known[namespace] = _JobMetrics(
            processed=counter("jobs_processed", "Jobs that returned (their messages are acked)."),
            failed=counter("jobs_failed", "Jobs that raised (their messages stay pending)."),
            retry_requested=counter(
                "jobs_retry_requested", "Jobs that raised flowd.Retry (run again after a delay)."
            ),
            gave_up=counter("jobs_gave_up", "Jobs that raised flowd.GiveUp (dead-lettered now)."),
            retried=counter("jobs_retried", "Runs of messages that were delivered before."),
            claimed=counter(
                "messages_claimed", "Messages reclaimed from an idle consumer, to run again."
            ),
            dead_lettered=counter("jobs_dead_lettered", "Messages sent down the dead-letter path."),
            expired=counter(
                "jobs_expired", "Jobs not run because their deadline passed before they started."
            ),
            duration=Histogram(
                "job_duration_seconds",
                "Time the worker function took.",
                ["stream", "outcome"],
                namespace=namespace,
                registry=registry,
                buckets=buckets,
            ),
            in_flight=Gauge(
                "jobs_in_flight",
                "Jobs running now.",
                ["stream"],
                namespace=namespace,
                registry=registry,
            ),
            buckets=buckets,
        )
        return found


class _StreamChildren:
    """The labelled metric children of one stream, looked up once."""

    __slots__ = (
        "claimed",
        "dead",
        "expired",
        "fail_time",
        "failed",
        "gave_up",
        "give_up_time",
        "in_flight",
        "ok_time",
        "processed",
        "retried",
        "retry_requested",
        "retry_time",
    )

    def __init__(self, metrics: _JobMetrics, stream: str) -> None:
        self.processed = metrics.processed.labels(stream)
        self.failed = metrics.failed.labels(stream)
        self.retry_requested = metrics.retry_requested.labels(stream)
        self.gave_up = metrics.gave_up.labels(stream)
        self.retried = metrics.retried.labels(stream)
        self.claimed = metrics.claimed.labels(stream)
        self.dead = metrics.dead_lettered.labels(stream)
        self.expired = metrics.expired.labels(stream)
        self.ok_time = metrics.duration.labels(stream, "success")
        self.fail_time = metrics.duration.labels(stream, "failure")
        self.retry_time = metrics.duration.labels(stream, "retry")
        self.give_up_time = metrics.duration.labels(stream, "give_up")
        self.in_flight = metrics.in_flight.labels(stream)


class PrometheusHooks(Hooks):
    """Queue hooks that count jobs in Prometheus metrics (see the module docstring).

    Pass one to each queue to observe: ``Queue(..., hooks=[PrometheusHooks()])``.
    Instances with the same registry and namespace share their metrics, so
    creating one per queue is fine. Thread-safe.

    :param registry: where the metrics are registered (default: the global one).
    :param namespace: the prefix of the metric names.
    :param buckets: the duration histogram's buckets, in seconds.
    """

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        namespace: str = "flowd",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.metrics = _job_metrics(registry, namespace, tuple(buckets))
        self._streams: dict[str, _StreamChildren] = {}

    def _children(self, stream: str) -> _StreamChildren:
        children = self._streams.get(stream)
        if children is None:
            children = self._streams[stream] = _StreamChildren(self.metrics, stream)
        return children

    def before_job(self, task: Task[Any]) -> None:
        children = self._children(task.stream)
        children.in_flight.inc()
        if task.deliveries > 1:
            children.retried.inc()

    def after_success(self, task: Task[Any], duration: float) -> None:
        children = self._children(task.stream)
        children.in_flight.dec()
        children.processed.inc()
        children.ok_time.observe(duration)

    def after_failure(self, task: Task[Any], exc: BaseException, duration: float) -> None:
        children = self._children(task.stream)
        children.in_flight.dec()
        children.failed.inc()
        children.fail_time.observe(duration)

    def after_retry(self, task: Task[Any], exc: Retry, duration: float) -> None:
        children = self._children(task.stream)
        children.in_flight.dec()
        children.retry_requested.inc()
        children.retry_time.observe(duration)

    def after_give_up(self, task: Task[Any], exc: GiveUp, duration: float) -> None:
        children = self._children(task.stream)
        children.in_flight.dec()
        children.gave_up.inc()
        children.give_up_time.observe(duration)

    def on_dead_letter(self, task: Task[Any]) -> None:
        self._children(task.stream).dead.inc()

    def on_expired(self, task: Task[Any]) -> None:
        self._children(task.stream).expired.inc()

    def on_claim(self, task: Task[Any]) -> None:
        self._children(task.stream).claimed.inc()


class StreamCollector:
    """Gauges of streams, their groups and dead letters, read with :func:`flowd.stream_info`.

    A scrape reads Redis only if the last reading is older than
    ``min_interval`` seconds (concurrent scrapes share one reading), so many
    scrapers or a short scrape interval cost Redis nothing more. Gauges, with
    the ``namespace`` prefix: ``stream_length``, ``stream_dead_letters``
    (labels: ``stream``); ``group_pending``, ``group_lag``, ``group_consumers``,
    ``group_oldest_pending_age_seconds`` (0 with nothing pending; labels:
    ``stream``, ``group``); and ``stream_info_up``, 0 when the last reading
    failed (its error is logged), else 1.

    :param client: a ``redis.Redis`` client.
    :param streams: the queues' streams.
    :param group: report only this group of each stream (default: every group).
    :param min_interval: seconds a reading is reused.
    :param lag_scan_limit: passed to :func:`flowd.stream_info`: on Redis 6.2
        lag is counted by reading at most this many entries per group.
    :param registry: registers the collector there; None leaves that to you.
    """

    def __init__(
        self,
        client: Any,
        streams: Iterable[str],
        *,
        group: str | None = None,
        min_interval: float = 15.0,
        lag_scan_limit: int = 1000,
        namespace: str = "flowd",
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.client = client
        self.streams = tuple(streams)
        if not self.streams or not all(isinstance(s, str) and s for s in self.streams):
            raise ConfigurationError(f"streams must be non-empty names, not {streams!r}")
        if isinstance(min_interval, bool) or not isinstance(min_interval, int | float):
            raise ConfigurationError(f"min_interval must be seconds, not {min_interval!r}")
        if min_interval < 0:
            raise ConfigurationError(f"min_interval must be >= 0, not {min_interval!r}")
        self.group = group
        self.min_interval = float(min_interval)
        self.lag_scan_limit = lag_scan_limit
        self.namespace = namespace
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._infos: dict[str, StreamInfo | None] = {}
        self.readings = 0  #: how many times Redis was read (for tests and curiosity)
        if registry is not None:
            registry.register(self)

    def _name(self, name: str) -> str:
        return f"{self.namespace}_{name}" if self.namespace else name

    def _families(self) -> dict[str, GaugeMetricFamily]:
        stream, group = ["stream"], ["stream", "group"]
        specs = [
            ("stream_length", "Entries in the stream.", stream),
            ("stream_dead_letters", "Entries in the stream's dead-letter stream.", stream),
            ("stream_info_up", "1 if the stream could be read at the last sampling.", stream),
            ("group_pending", "Messages delivered to the group and not acked yet.", group),
            ("group_lag", "Entries not delivered to the group yet.", group),
            ("group_consumers", "Consumers in the group.", group),
            (
                "group_oldest_pending_age_seconds",
                "Age of the group's oldest pending message (0 if none).",
                group,
            ),
        ]
        return {
            name: GaugeMetricFamily(self._name(name), doc, labels=labels)
            for name, doc, labels in specs
        }

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (so registering reads nothing)."""
        return iter(self._families().values())

    def _sample(self) -> dict[str, StreamInfo | None]:
        with self._lock:
            now = time.monotonic()
            if self._read_at is not None and now - self._read_at < self.min_interval:
                return self._infos
            infos: dict[str, StreamInfo | None] = {}
            for stream in self.streams:
                try:
                    infos[stream] = stream_info(
                        self.client, stream, group=self.group, lag_scan_limit=self.lag_scan_limit
                    )
                except Exception as exc:
                    logger.warning("cannot read stream %s for metrics: %s", stream, exc)
                    infos[stream] = None
            self._infos, self._read_at = infos, time.monotonic()
            self.readings += 1
            return infos

    def collect(self) -> Iterator[Metric]:
        """The gauges, from a reading at most ``min_interval`` seconds old."""
        families = self._families()
        for stream, info in self._sample().items():
            families["stream_info_up"].add_metric([stream], 0.0 if info is None else 1.0)
            if info is None:
                continue
            families["stream_length"].add_metric([stream], info.length)
            families["stream_dead_letters"].add_metric([stream], info.dlq_length)
            for group in info.groups:
                labels = [stream, group.name]
                families["group_pending"].add_metric(labels, group.pending)
                families["group_lag"].add_metric(labels, group.lag)
                families["group_consumers"].add_metric(labels, len(group.consumers))
                families["group_oldest_pending_age_seconds"].add_metric(
                    labels, (group.oldest_pending_age_ms or 0) / 1000.0
                )
        return iter(families.values())


class MetricsServer:
    """The exporter started by :func:`serve`; ``close()`` stops it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen, when ``serve`` was given 0)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The URL of the metrics page."""
        host = self._server.server_address[0]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving, close the socket and join the server thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> MetricsServer:
    """Serve ``registry`` at ``http://addr:port/metrics`` from a daemon thread.

    Built on ``prometheus_client.start_http_server``. It listens on loopback
    by default: pass ``addr="0.0.0.0"`` to let a Prometheus on another host
    scrape it. ``port=0`` picks a free port (see ``MetricsServer.port``).

    :raises OSError: the address is in use.
    """
    started: Any = _start_http_server(port, addr=addr, registry=registry)
    if started is None:  # prometheus-client < 0.20 returns nothing to stop
        raise RuntimeError("flowd.contrib.prometheus.serve needs prometheus-client >= 0.20")
    server, thread = started
    logger.info("serving metrics on %s:%d", addr, int(server.server_address[1]))
    return MetricsServer(server, thread)
