"""Results: what a job returned, where a job is now, and waiting for it to finish.

>>> results = flowd.Results(client, "emails")
>>> results.get(job_id)                      # None for an id Redis knows nothing of
JobResult(id='1712345678901-0', status=<JobStatus.RUNNING: 'running'>, ...)
>>> results.wait(job_id, timeout=30, type=Receipt).value
Receipt(...)

A queue keeps results when it is given ``result_ttl``; ``get`` answers
without it too, from what Redis holds about the job (scheduled set, stream
entry and each group's last-delivered id, pending list, failure records,
dead-letter records), in one round trip (see flowd._redis.lookup).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ._codec.values import from_plain
from ._consumer.runs import claimed_deliveries
from ._redis.fields import trace_id_of
from ._redis.keys import done_key, partition_streams, waiters_key
from ._redis.lookup import Found, GroupView, lookup
from ._redis.session import check_client
from ._redis.timeutil import Seconds, to_seconds
from .errors import ConfigurationError, ResultTimeout
from .flow.priorities import band_streams

__all__ = ["JobResult", "JobStatus", "Results"]

#: Longest one blocking wait lasts before the job is looked up again: a job whose id
#: changes meanwhile (a delayed job moved, a retry scheduled) is found under its new id.
WAIT_SLICE = 1.0


class JobStatus(enum.Enum):
    """Where a job is."""

    #: In the scheduled set: a delayed job, or a retry scheduled for later.
    SCHEDULED = "scheduled"
    #: In the stream, not yet delivered to the group.
    WAITING = "waiting"
    #: Delivered and pending: a worker holds it now.
    RUNNING = "running"
    #: Pending after a failed run: it runs again (or is dead-lettered) once claimed.
    RETRYING = "retrying"
    #: The worker returned (without ``result_ttl``: acked, and no failure record says
    #: otherwise).
    SUCCEEDED = "succeeded"
    #: It used up its retries (or gave up) and the queue keeps no dead letters; or it
    #: expired on a queue with ``dead_letter_expired=False`` (``error`` is "expired").
    FAILED = "failed"
    #: It used up its retries (or gave up, could not be decoded, or expired: ``error``
    #: says): in the dead letters.
    DEAD = "dead"
    #: Cancelled while it was scheduled.
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the states a job does not leave."""
        return self in _FINISHED


_FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class JobResult:
    """What Redis holds about one job: its status and, once it finished, its outcome.

    ``value`` is what the worker returned (plain JSON, or decoded into ``type=``);
    ``error`` and ``traceback`` are its last failure's; ``deliveries`` counts its
    runs so far; times are UTC datetimes (``started_at`` and ``finished_at`` once
    it finished); ``consumer`` is the consumer that runs or ran it.
    """

    id: str
    status: JobStatus
    value: Any = None
    error: str | None = None
    traceback: str | None = None
    deliveries: int = 0
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    consumer: str | None = None
    #: The dead letter's id in the dead-letter stream (status DEAD), when known.
    dead_letter_id: str | None = None
    #: The OpenTelemetry trace id (32 hex digits) of a job enqueued with
    #: ``Producer(tracing=True)``, when Redis still holds it.
    trace_id: str | None = None


def _utc(ms: Any) -> datetime | None:
    if ms is None or isinstance(ms, bool):
        return None
    try:
        return datetime.fromtimestamp(int(ms) / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _id_tuple(msg_id: str) -> tuple[int, int] | None:
    ms, sep, seq = msg_id.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        return None
    return int(ms), int(seq)


def enqueued_at(job_id: str) -> datetime | None:
    """When a job id was handed out: a stream id's time, a delayed job's (``s-<ns hex>``),
    or the time of the id a retry was scheduled for (``retry-<id>-...``)."""
    if job_id.startswith("s-"):
        try:
            return datetime.fromtimestamp(int(job_id.split("-")[1], 16) / 1e9, UTC)
        except (IndexError, ValueError, OverflowError, OSError):
            return None
    if job_id.startswith("retry-"):
        job_id = job_id[len("retry-") :]
    parts = job_id.split("-")
    if len(parts) >= 2 and parts[0].isdigit():
        return _utc(parts[0])
    return None


def _from_record(job_id: str, found: Found, type_: Any) -> JobResult:
    record = found.record or {}
    try:
        status = JobStatus(record.get("status"))
    except ValueError:
        status = JobStatus.SUCCEEDED
    value = from_plain(record.get("value"), type_) if "value" in record else None
    deliveries = record.get("deliveries")
    return JobResult(
        id=job_id,
        status=status,
        value=value,
        error=record.get("error") or None,
        traceback=record.get("traceback") or None,
        deliveries=int(deliveries) if isinstance(deliveries, int | float) else 0,
        enqueued_at=enqueued_at(job_id) or enqueued_at(found.id),
        started_at=_utc(record.get("started")),
        finished_at=_utc(record.get("finished")),
        consumer=record.get("consumer") or None,
        dead_letter_id=record.get("dead_letter") or None,
        trace_id=trace_id_of(record.get("traceparent")),
    )


def _from_pending(job_id: str, found: Found, view: GroupView) -> JobResult:
    count = view.count or 1
    deliveries = count if count < 2 else claimed_deliveries(count, view.starts)
    return JobResult(
        id=job_id,
        status=JobStatus.RETRYING if view.error is not None else JobStatus.RUNNING,
        error=view.error,
        traceback=view.traceback,
        deliveries=deliveries,
        enqueued_at=enqueued_at(job_id) or enqueued_at(found.id),
        consumer=view.consumer,
        trace_id=trace_id_of(found.traceparent),
    )


def job_result(job_id: str, found: Found, type_: Any = None) -> JobResult:
    """The JobResult of what the lookup found about ``job_id`` (see :class:`JobStatus`)."""
    if found.record is not None:
        return _from_record(job_id, found, type_)
    when = enqueued_at(job_id) or enqueued_at(found.id)
    if found.scheduled_ms is not None:
        # A retry scheduled for later is still a retry, not a new job.
        retry = found.id.startswith("retry-")
        status = JobStatus.RETRYING if retry else JobStatus.SCHEDULED
        return JobResult(id=job_id, status=status, enqueued_at=when)
    for view in found.groups:
        if view.pending:
            return _from_pending(job_id, found, view)
    current = _id_tuple(found.id)
    waiting = not found.groups or any(
        current is not None and current > (_id_tuple(view.last_delivered) or (0, 0))
        for view in found.groups
    )
    status = JobStatus.WAITING if waiting else JobStatus.SUCCEEDED
    return JobResult(
        id=job_id, status=status, enqueued_at=when, trace_id=trace_id_of(found.traceparent)
    )


class Results:
    """Reads jobs' results and states on one queue's stream (or its partitions).

    Thread-safe; holds no state but its settings. ``group`` narrows the
    lookup to one consumer group (by default every group of the stream is
    asked: a job is WAITING while any group has not read it).

    :param client: a ``redis.Redis`` (or Sentinel-made, or ``RedisCluster``) client.
    :param stream: the queue's stream (its name, when partitioned).
    :param group: the consumer group whose view counts, or None for all.
    :param partitions: the queue's partitions (see ``Queue(partitions=...)``). Each
        partition makes its own stream ids, so two can hand out the same one (bulk
        enqueues do, often): an id that several partitions know is refused with
        ConfigurationError rather than guessed; ask ``Results(client, task.stream)``
        of the partition itself. Delayed jobs' ``s-...`` ids are unique. A job of a
        priority band (``enqueue(..., priority=...)``) is found there when the
        queue's streams do not know its id; the band's own ``Results(client,
        task.stream)`` tells the two apart should both know it.
    """

    def __init__(
        self, client: Any, stream: str, *, group: str | None = None, partitions: int = 1
    ) -> None:
        if not isinstance(stream, str) or not stream:
            raise ConfigurationError(f"stream must be a non-empty str, not {stream!r}")
        if group is not None and (not isinstance(group, str) or not group):
            raise ConfigurationError(f"group must be a non-empty str or None, not {group!r}")
        self.client = check_client(client)
        self.stream = stream
        self.group = group
        self.streams = partition_streams(stream, partitions)
        #: The priority bands' streams, looked at for an id the streams do not know.
        self.bands = [band for s in self.streams for band in band_streams(s)[::2]]

    def __repr__(self) -> str:
        return f"Results(stream={self.stream!r}, group={self.group!r})"

    def _find(self, job_id: object) -> Found | None:
        if not isinstance(job_id, str) or not job_id:
            raise ConfigurationError(f"job_id must be a non-empty str, not {job_id!r}")
        found = lookup(self.client, self.streams, job_id, self.group)
        return found or lookup(self.client, self.bands, job_id, self.group)

    def get(self, job_id: str, type: Any = None) -> JobResult | None:
        """Where the job is and, once it finished, how; None for an id Redis knows
        nothing of (never handed out, or its traces expired or were trimmed).

        :param type: decode the value into this type (a dataclass, ``int``,
            ``list[Point]``...) with the job codecs' rules; plain JSON without it.
        :raises ConfigurationError: ``job_id`` is not a non-empty str.
        :raises DecodeError: the stored value does not fit ``type``.
        """
        found = self._find(job_id)
        return None if found is None else job_result(job_id, found, type)

    def wait(self, job_id: str, timeout: Seconds, type: Any = None) -> JobResult:
        """Block until the job finished (SUCCEEDED, FAILED, DEAD or CANCELLED); its result.

        It blocks in Redis (BLMOVE on a list the record's writer pushes to, one
        connection per waiting thread), so it wakes as soon as the record is
        written, without polling;
        it looks the job up again at least every second, to follow an id that
        changed. A queue without ``result_ttl`` writes no record for a success:
        such a wait ends only with the once-a-second look.

        :raises ResultTimeout: the job had not finished when ``timeout`` passed.
        :raises ConfigurationError: bad ``job_id`` or ``timeout``.
        """
        seconds = to_seconds(timeout, "timeout", allow_zero=True)
        deadline = time.monotonic() + seconds
        #: (stream, id) this wait added to a waiters set: taken out when it ends.
        blocked_on: set[tuple[str, str]] = set()
        try:
            while True:
                found = self._find(job_id)
                result = None if found is None else job_result(job_id, found, type)
                if result is not None and result.status.finished:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    status = None if result is None else result.status
                    raise ResultTimeout(job_id, seconds, status)
                stream, current = (
                    (self.streams[0], job_id) if found is None else (found.stream, found.id)
                )
                blocked_on.add((stream, current))
                self._block(stream, current, min(left, WAIT_SLICE))
        finally:
            for stream, current in blocked_on:
                self.client.srem(waiters_key(stream), current)

    def _block(self, stream: str, job_id: str, seconds: float) -> None:
        """Wait up to ``seconds`` for the job's record to be written, in Redis."""
        # Within the client's own socket timeout, if it has one.
        cap = _socket_timeout(self.client)
        if cap is not None:
            seconds = min(seconds, cap / 2)
        seconds = max(seconds, 0.01)
        done = done_key(stream, job_id)
        waiters = waiters_key(stream)
        # Say that someone waits, then look once more: a writer (one atomic script) either
        # wrote the record before the mark, and this look sees it, or sees the mark and
        # pushes to the done list.
        with self.client.pipeline(transaction=False) as pipe:
            pipe.sadd(waiters, job_id)
            pipe.pexpire(waiters, int((seconds + 60) * 1000))
            pipe.execute()
        found = self._find(job_id)
        if found is not None and found.record is not None:
            return
        # BLMOVE from the list to itself hands the element back: every waiter wakes.
        self.client.execute_command("BLMOVE", done, done, "RIGHT", "LEFT", seconds)


def _socket_timeout(client: Any) -> float | None:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    value = kwargs.get("socket_timeout")
    return float(value) if isinstance(value, int | float) and value > 0 else None
