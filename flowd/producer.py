"""Producer: XADD jobs to a stream, one at a time or pipelined in bulk."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis.exceptions

from ._codec.plan import FieldAppender, field_appender
from ._redis import scheduling as sched
from ._redis.bulk import BulkAccount, Unknown, chunks, pipeline, written
from ._redis.durable import Durable, as_str
from ._redis.keys import partition_streams
from ._redis.session import check_client
from ._redis.timeutil import Seconds, to_seconds
from .errors import ConfigurationError, EncodeError
from .flow.expiry import expiry_fields
from .flow.priorities import band_stream, band_streams, check_priority
from .job import Job

if TYPE_CHECKING:
    from .contrib.opentelemetry._producer import ProducerTracing

__all__ = ["Producer"]

_DEFAULT_CHUNK = 1000
#: Written for a job with no field to write (no fields, or only None ones).
EMPTY_JOB_FIELD = ("flowd:empty", "1")

#: Picks the partition of a job: related jobs with the same key keep their order.
PartitionKey = Callable[[Any], str | bytes | int]
#: flowd's own fields appended to each job of one call (its deadline).
Extra = tuple[str, ...]


def _key_bytes(value: str | bytes | int) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


class Producer:
    """Adds jobs to one stream (or to the partitions of one queue).

    Thread-safe: it holds no state but its settings and a round-robin counter,
    and redis-py clients are safe to share between threads.

    >>> producer = Producer(client, stream="emails")
    >>> producer.enqueue(SendEmail(to="a@b.c", subject="hi"))
    '1712345678901-0'

    :param client: a ``redis.Redis`` (or Sentinel-made, or ``RedisCluster``)
        client. Its retry policy applies to XADD: with redis-py's default, a
        command whose reply was lost on a broken connection is sent again, so
        an enqueue can, rarely, add a job twice (at-least-once, like delivery).
        Give the client ``retry=None`` and handle errors yourself if you would
        rather see the error.
    :param stream: the stream key (the queue's name when partitioned).
    :param maxlen: off by default. When set, each XADD trims the stream to about
        this many entries (``MAXLEN ~``). Trimming does not look at consumer
        groups: entries that no worker has read yet are deleted too, and those
        jobs are lost. Prefer the queue's own housekeeping.
    :param chunk_size: jobs per pipelined round trip in ``enqueue_bulk``; bounds
        the memory held for one round trip.
    :param partitions: spread jobs over this many streams (one per partition,
        see ``Queue(partitions=...)``; on Redis Cluster they sit on different
        masters). Jobs go round-robin, or by ``key``.
    :param key: with partitions, a function of the job whose value picks its
        partition (CRC32 modulo ``partitions``), so jobs with the same key stay
        in order within one partition.
    :param replicas: durable enqueue: after each enqueue (or each bulk chunk),
        WAIT until this many replicas hold the writes.
    :param replica_timeout: seconds WAIT may take; then ReplicationError.
    :param tracing: a PRODUCER span per enqueue (one per ``enqueue_bulk`` call), whose
        trace context each message carries to the consumer's span (see
        :mod:`flowd.contrib.opentelemetry`); needs the ``opentelemetry`` extra.
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        *,
        maxlen: int | None = None,
        chunk_size: int = _DEFAULT_CHUNK,
        partitions: int = 1,
        key: PartitionKey | None = None,
        replicas: int = 0,
        replica_timeout: Seconds = 1.0,
        tracing: bool = False,
    ) -> None:
        if not isinstance(stream, str) or not stream:
            raise ConfigurationError(f"stream must be a non-empty str, not {stream!r}")
        self.client = check_client(client)
        if maxlen is not None and (
            isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1
        ):
            raise ConfigurationError(f"maxlen must be a positive int or None, not {maxlen!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigurationError(f"chunk_size must be a positive int, not {chunk_size!r}")
        if key is not None and not callable(key):
            raise ConfigurationError(f"key must be a function of the job, not {key!r}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ConfigurationError(f"replicas must be an int >= 0, not {replicas!r}")
        self.stream = stream
        self.maxlen = maxlen
        self.chunk_size = chunk_size
        #: The streams jobs go to: [stream], or one per partition.
        self.streams = partition_streams(stream, partitions)
        self.key = key
        self.replicas = replicas
        self.replica_timeout = to_seconds(replica_timeout, "replica_timeout")
        self._round_robin = itertools.count()
        self._last: tuple[type[Any] | None, FieldAppender] = (None, _no_fields)
        self._trim: tuple[Any, ...] = ("MAXLEN", "~", maxlen) if maxlen else ()
        self._tracing = _tracing(stream) if tracing else None
        self._durable = Durable(self.client, replicas, self.replica_timeout)

    def __repr__(self) -> str:
        return f"Producer(stream={self.stream!r}, partitions={len(self.streams)})"

    def _stream_for(self, job: Job, priority: int = 0) -> str:
        streams = self.streams
        if len(streams) == 1:
            stream = streams[0]
        elif self.key is not None:
            stream = streams[zlib.crc32(_key_bytes(self.key(job))) % len(streams)]
        else:
            stream = streams[next(self._round_robin) % len(streams)]
        return band_stream(stream, priority) if priority else stream

    def _append_fields(self, job: Job, args: list[Any], extra: Extra = ()) -> None:
        if not isinstance(job, Job):
            raise EncodeError(
                f"enqueue takes a flowd.Job dataclass instance, not {type(job).__name__}"
            )
        prefix = len(args)
        last_class, appender = self._last  # one tuple: safe to share between threads
        if type(job) is not last_class:  # one lookup per run of same-class jobs
            appender = field_appender(type(job))
            self._last = (type(job), appender)
        appender(job, args)
        if len(args) == prefix:
            # A stream entry needs a field; decoding ignores fields the class does not know.
            args += EMPTY_JOB_FIELD
        if self._tracing is not None:
            args += self._tracing.fields()
        args += extra

    def _command(self, job: Job, extra: Extra = (), priority: int = 0) -> list[Any]:
        args: list[Any] = ["XADD", self._stream_for(job, priority), *self._trim, "*"]
        self._append_fields(job, args, extra)
        return args

    def _script_call(
        self,
        job: Job,
        when: tuple[str, int] | None,
        unique: str | None,
        extra: Extra,
        priority: int,
    ) -> tuple[str, list[str], list[Any]]:
        """(stream, keys, args) of the enqueue script for one delayed or unique job (a
        delayed job waits in its band's sorted set, so it lands in its band when due)."""
        if unique is not None and self.key is None and len(self.streams) > 1:
            # The key's holder lives in one partition: the same key must pick the same one.
            stream = self.streams[zlib.crc32(unique.encode("utf-8")) % len(self.streams)]
            stream = band_stream(stream, priority)
        else:
            stream = self._stream_for(job, priority)
        job_id = sched.new_scheduled_id()
        mode, ms = when if when is not None else ("now", 0)
        args: list[Any] = [mode, ms, job_id, self.maxlen or ""]
        self._append_fields(job, args, extra)
        keys = [stream, sched.scheduled_key(stream), sched.job_key(stream, job_id)]
        if unique is not None:
            args += (sched.UNIQUE_FIELD, unique)
            keys.append(sched.unique_key(stream, unique))
        if len(args) - 4 > sched.MAX_FIELD_VALUES:
            raise EncodeError(
                f"{type(job).__name__} has {(len(args) - 4) // 2} fields: a delayed or "
                f"unique job can have at most {sched.MAX_FIELD_VALUES // 2}"
            )
        return stream, keys, args

    def enqueue(
        self,
        job: Job,
        *,
        delay: Seconds | None = None,
        at: datetime | None = None,
        unique_key: str | None = None,
        expires: Seconds | datetime | None = None,
        priority: int = 0,
    ) -> str:
        """Add one job; returns its id.

        With ``delay`` (seconds or timedelta) or ``at`` (a timezone-aware
        datetime), the job waits in the stream's sorted set of scheduled jobs
        and the id is a scheduled-job id (``s-...``), which :meth:`cancel`
        takes; a running Queue moves it into the stream when Redis's clock
        reaches its time. A delay of 0, or an ``at`` Redis finds past,
        enqueues at once and returns the stream id.

        With ``unique_key``, while a job enqueued with that key is scheduled,
        waiting in the stream or running, nothing is written and that job's
        id is returned.

        With ``expires`` (seconds or a timedelta from this call, or a
        timezone-aware datetime), a run that has not started by then is not
        started: the job is dead-lettered with the reason ``"expired"`` (or
        acked, with ``Queue(dead_letter_expired=False)``). Retries keep it.

        With ``priority`` (an int from -100 to 100, default 0), waiting jobs of a
        higher band start first: above 0, 0, below 0 (see
        :mod:`flowd.flow.priorities`; a ``unique_key`` is unique within its band).

        :raises ConfigurationError: bad ``delay``, ``at``, ``unique_key``, ``expires`` or
            ``priority``,
            both ``delay`` and ``at``, or ``expires`` not after them (nothing is sent).
        :raises EncodeError: a field's value does not fit its annotation (nothing is sent).
        :raises ReplicationError: with ``replicas``, too few replicas confirmed in time
            (the job was added on the master).
        """
        if self._tracing is not None:
            return self._tracing.enqueue(
                self._enqueue, job, delay, at, unique_key, expires, priority
            )
        return self._enqueue(job, delay, at, unique_key, expires, priority)

    def _enqueue(
        self,
        job: Job,
        delay: Seconds | None,
        at: datetime | None,
        unique_key: str | None,
        expires: Seconds | datetime | None,
        priority: int,
    ) -> str:
        when = sched.enqueue_time(delay, at)
        unique = sched.check_unique_key(unique_key)
        extra = expiry_fields(expires, when)
        if priority or type(priority) is not int:  # 0, the default, costs one test
            check_priority(priority)
        if when is None and unique is None:
            command = self._command(job, extra, priority)
            if not self.replicas:
                return as_str(self.client.execute_command(*command))
            return str(self._durable.send([command])[0])
        stream, keys, args = self._script_call(job, when, unique, extra, priority)
        if not self.replicas:
            return as_str(sched.ENQUEUE(self.client, keys, args)[1])
        command = ["EVAL", sched.ENQUEUE.source, len(keys), *keys, *args]
        reply: list[Any] = self._durable.send(
            [command], [stream], lambda reply: [as_str(reply[1])]
        )[0]
        return as_str(reply[1])

    def cancel(self, job_id: str) -> bool:
        """Remove a job that is still scheduled; False once it has been moved to the
        stream (or for an id that is not scheduled).

        :raises ConfigurationError: ``job_id`` is not a non-empty str.
        """
        if not isinstance(job_id, str) or not job_id:
            raise ConfigurationError(f"job_id must be a non-empty str, not {job_id!r}")
        return any(
            sched.cancel(self.client, band, job_id)
            for stream in self.streams
            for band in (stream, *band_streams(stream)[::2])
        )

    def enqueue_bulk(
        self,
        jobs: Iterable[Job],
        *,
        delay: Seconds | None = None,
        at: datetime | None = None,
        expires: Seconds | datetime | None = None,
        priority: int = 0,
    ) -> list[str]:
        """Add many jobs in pipelined round trips (``transaction=False``); ids in input order.

        Jobs are encoded and sent ``chunk_size`` at a time, so a generator of
        any length is fine. An empty input makes no call. ``delay`` or ``at``
        schedule every job as :meth:`enqueue` does; ``expires`` gives every job the
        same deadline (a relative one counts from this call); ``priority`` puts every
        job in that priority's band, as :meth:`enqueue` does.

        When a chunk is not written in full (Redis refuses some jobs, OOM say, or
        the connection breaks), no further chunk is sent: the rest of the input
        is read (not encoded) to number it, and :class:`~flowd.EnqueueError` says
        which jobs were written (``enqueued``, their ids), which certainly were
        not (``failed``: send these again) and which may have been (``unknown``).

        :raises ConfigurationError: bad ``delay``, ``at``, ``expires`` or ``priority``
            (nothing is sent).
        :raises EncodeError: a job does not fit its class; the jobs of earlier chunks
            were already added, and their ids are on the error's ``enqueued`` attribute.
        :raises EnqueueError: some jobs were not written, or may not have been.
        :raises ReplicationError: with ``replicas``, too few replicas confirmed a chunk.
        """
        if self._tracing is not None:
            return self._tracing.enqueue_bulk(
                self._enqueue_bulk, jobs, delay, at, expires, priority
            )
        return self._enqueue_bulk(jobs, delay, at, expires, priority)

    def _enqueue_bulk(
        self,
        jobs: Iterable[Job],
        delay: Seconds | None,
        at: datetime | None,
        expires: Seconds | datetime | None,
        priority: int,
    ) -> list[str]:
        when = sched.enqueue_time(delay, at)
        extra = expiry_fields(expires, when)
        if priority or type(priority) is not int:  # 0, the default, costs one test
            check_priority(priority)
        pending = iter(jobs)
        bulk = BulkAccount()
        for chunk in chunks(pending, self.chunk_size):
            try:
                if when is None:
                    outcomes = self._send_bulk_chunk(chunk, extra, priority)
                else:
                    outcomes = self._send_scheduled_chunk(chunk, when, extra, priority)
            except EncodeError as exc:
                exc.enqueued = bulk.ids  # type: ignore[attr-defined]
                if bulk.ids:
                    exc.args = (
                        f"{exc.args[0]} ({len(bulk.ids)} jobs of earlier chunks "
                        "were already enqueued; see .enqueued)",
                    )
                raise
            bulk.add(outcomes)
            if bulk.cause is not None:
                error = bulk.error(pending)
                raise error from error.cause
        return bulk.ids

    def _send_bulk_chunk(self, chunk: list[Job], extra: Extra, priority: int) -> list[Any]:
        """Each job's outcome: its id, the error Redis refused it with, or Unknown.

        Encodes the whole chunk before sending any of it (EncodeError sends nothing).
        """
        commands = [self._command(job, extra, priority) for job in chunk]
        if self.replicas:
            replies, waits = self._durable.replies(commands)
            outcomes = [as_str(r) if written(r) else r for r in replies]
            if all(written(r) for r in replies):
                self._durable.check(waits, [str(o) for o in outcomes])
            return outcomes
        # raise_on_error=False: each job's own reply, so one refused XADD does not
        # hide which of the others were written.
        replies = pipeline(self.client, commands)
        return [as_str(r) if written(r) else r for r in replies]

    def _send_scheduled_chunk(
        self, chunk: list[Job], when: tuple[str, int], extra: Extra, priority: int
    ) -> list[Any]:
        """Scheduled bulk: one ENQUEUE_MANY call per stream and batch, pipelined; each
        job's outcome as in :meth:`_send_bulk_chunk`."""
        calls = self._bulk_calls(chunk, when, extra, priority)
        waits: list[tuple[list[int], Any]] = []
        if self.replicas:
            script = sched.ENQUEUE_MANY
            commands = [["EVAL", script.source, len(k), *k, *a] for _, k, a, _ in calls]
            replies, waits = self._durable.replies(commands, [stream for stream, *_ in calls])
        else:
            try:
                replies = sched.ENQUEUE_MANY.pipelined(
                    self.client, [(k, a) for _, k, a, _ in calls], raise_on_error=False
                )
            except redis.exceptions.RedisError as exc:
                replies = [Unknown(exc)] * len(calls)
        outcomes: list[Any] = [None] * len(chunk)
        for (_, _, _, indexes), reply in zip(calls, replies, strict=True):
            if not written(reply):
                # A script refused for OOM is refused before its first write (Redis
                # lets a script that has written run to its end): none of its jobs is in.
                for index in indexes:
                    outcomes[index] = reply
                continue
            for index, msg_id in zip(indexes, reply, strict=True):
                outcomes[index] = as_str(msg_id)
        if all(written(o) for o in outcomes):
            self._durable.check(waits, [str(o) for o in outcomes])
        return outcomes

    def _bulk_calls(
        self, chunk: list[Job], when: tuple[str, int], extra: Extra, priority: int
    ) -> list[tuple[str, list[str], list[Any], list[int]]]:
        """(stream, keys, args, indexes in chunk) of each ENQUEUE_MANY call for a chunk."""
        open_calls: dict[str, tuple[str, list[str], list[Any], list[int]]] = {}
        calls: list[tuple[str, list[str], list[Any], list[int]]] = []
        for index, job in enumerate(chunk):
            stream = self._stream_for(job, priority)
            fields: list[Any] = []
            self._append_fields(job, fields, extra)
            if len(fields) > sched.MAX_FIELD_VALUES:
                raise EncodeError(
                    f"{type(job).__name__} has {len(fields) // 2} fields: a delayed job "
                    f"can have at most {sched.MAX_FIELD_VALUES // 2}"
                )
            call = open_calls.get(stream)
            if call is None or (
                len(call[3]) >= sched.ENQUEUE_BATCH
                or len(call[2]) + len(fields) > sched.ENQUEUE_BATCH_VALUES
            ):
                keys = [stream, sched.scheduled_key(stream)]
                args: list[Any] = [*when, self.maxlen or "", sched.job_key(stream, "")]
                call = (stream, keys, args, [])
                open_calls[stream] = call
                calls.append(call)
            call[2].extend((sched.new_scheduled_id(), len(fields), *fields))
            call[3].append(index)
        return calls


def _tracing(stream: str) -> ProducerTracing:
    """The producer's tracing; ConfigurationError when OpenTelemetry is not installed."""
    try:
        from .contrib.opentelemetry._producer import ProducerTracing
    except ImportError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise  # a bug, not a missing extra
        raise ConfigurationError(
            "tracing=True needs OpenTelemetry: pip install 'flowd-queue[opentelemetry]'"
        ) from exc
    return ProducerTracing(stream)


def _no_fields(job: Any, args: list[Any]) -> None:
    raise AssertionError("replaced on first use")
