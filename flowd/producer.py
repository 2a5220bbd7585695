"""Producer: XADD jobs to a stream, one at a time or pipelined in bulk."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

from ._keys import partition_streams
from ._plan import FieldAppender, field_appender
from ._redis import check_client, is_cluster
from ._timeutil import Seconds, to_ms, to_seconds
from .errors import ConfigurationError, EncodeError, ReplicationError
from .job import Job

__all__ = ["Producer"]

_DEFAULT_CHUNK = 1000
#: Written for a job with no field to write (no fields, or only None ones).
EMPTY_JOB_FIELD = ("flowd:empty", "1")

#: Picks the partition of a job: related jobs with the same key keep their order.
PartitionKey = Callable[[Any], str | bytes | int]


def _as_str(reply: bytes | str) -> str:
    return reply.decode("ascii") if isinstance(reply, bytes) else reply


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

    def __repr__(self) -> str:
        return f"Producer(stream={self.stream!r}, partitions={len(self.streams)})"

    def _stream_for(self, job: Job) -> str:
        streams = self.streams
        if len(streams) == 1:
            return streams[0]
        if self.key is not None:
            return streams[zlib.crc32(_key_bytes(self.key(job))) % len(streams)]
        return streams[next(self._round_robin) % len(streams)]

    def _command(self, job: Job) -> list[Any]:
        if not isinstance(job, Job):
            raise EncodeError(
                f"enqueue takes a flowd.Job dataclass instance, not {type(job).__name__}"
            )
        args: list[Any] = ["XADD", self._stream_for(job), *self._trim, "*"]
        prefix = len(args)
        last_class, appender = self._last  # one tuple: safe to share between threads
        if type(job) is not last_class:  # one lookup per run of same-class jobs
            appender = field_appender(type(job))
            self._last = (type(job), appender)
        appender(job, args)
        if len(args) == prefix:
            # A stream entry needs a field; decoding ignores fields the class does not know.
            args += EMPTY_JOB_FIELD
        return args

    def enqueue(self, job: Job) -> str:
        """Add one job; returns its stream id.

        :raises EncodeError: a field's value does not fit its annotation (nothing is sent).
        :raises ReplicationError: with ``replicas``, too few replicas confirmed in time
            (the job was added on the master).
        """
        command = self._command(job)
        if not self.replicas:
            return _as_str(self.client.execute_command(*command))
        return self._send_durable([command])[0]

    def enqueue_bulk(self, jobs: Iterable[Job]) -> list[str]:
        """Add many jobs in pipelined round trips (``transaction=False``); ids in input order.

        Jobs are encoded and sent ``chunk_size`` at a time, so a generator of
        any length is fine. An empty input makes no call.

        :raises EncodeError: a job does not fit its class; the jobs of earlier chunks
            were already added, and their ids are on the error's ``enqueued`` attribute.
        :raises ReplicationError: with ``replicas``, too few replicas confirmed a chunk.
        """
        ids: list[str] = []
        for chunk in _chunks(iter(jobs), self.chunk_size):
            try:
                commands = [self._command(job) for job in chunk]
            except EncodeError as exc:
                exc.enqueued = ids  # type: ignore[attr-defined]
                if ids:
                    exc.args = (
                        f"{exc.args[0]} ({len(ids)} jobs of earlier chunks "
                        "were already enqueued; see .enqueued)",
                    )
                raise
            if self.replicas:
                ids.extend(self._send_durable(commands))
                continue
            with self.client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                ids.extend(_as_str(reply) for reply in pipe.execute())
        return ids

    def _send_durable(self, commands: list[list[Any]]) -> list[str]:
        """XADDs then WAIT, on one connection per stream (WAIT covers that connection's
        writes); ids come back in the order of ``commands``."""
        by_stream: dict[str, list[int]] = {}
        for index, command in enumerate(commands):
            by_stream.setdefault(command[1], []).append(index)
        ids: list[str] = [""] * len(commands)
        for stream, indexes in by_stream.items():
            node_client = (
                self.client.get_node_from_key(stream).redis_connection
                if is_cluster(self.client)
                else self.client
            )
            with node_client.pipeline(transaction=False) as pipe:
                for index in indexes:
                    pipe.execute_command(*commands[index])
                pipe.execute_command("WAIT", self.replicas, to_ms(self.replica_timeout))
                replies = pipe.execute()
            written = [_as_str(reply) for reply in replies[:-1]]
            for index, msg_id in zip(indexes, written, strict=True):
                ids[index] = msg_id
            acknowledged = int(replies[-1])
            if acknowledged < self.replicas:
                raise ReplicationError(self.replicas, acknowledged, self.replica_timeout, written)
        return ids


def _no_fields(job: Any, args: list[Any]) -> None:
    raise AssertionError("replaced on first use")


def _chunks(jobs: Iterator[Job], size: int) -> Iterator[list[Job]]:
    while chunk := list(islice(jobs, size)):
        yield chunk
