"""Producer: XADD jobs to a stream, one at a time or pipelined in bulk."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import redis.client

from .errors import ConfigurationError, EncodeError
from .job import Job, encode_job

__all__ = ["Producer"]

_DEFAULT_CHUNK = 1000
#: Written for a job with no field to write (no fields, or only None ones).
EMPTY_JOB_FIELD = ("flowd:empty", "1")


def _as_str(reply: bytes | str) -> str:
    return reply.decode("ascii") if isinstance(reply, bytes) else reply


class Producer:
    """Adds jobs to one stream.

    Thread-safe: it holds no state but its settings, and redis-py clients
    are safe to share between threads.

    >>> producer = Producer(client, stream="emails")
    >>> producer.enqueue(SendEmail(to="a@b.c", subject="hi"))
    '1712345678901-0'

    :param client: a ``redis.Redis`` client. Its retry policy applies to XADD:
        with redis-py's default, a command whose reply was lost on a broken
        connection is sent again, so an enqueue can, rarely, add a job twice
        (at-least-once, like delivery). Give the client ``retry=None`` and
        handle errors yourself if you would rather see the error.
    :param stream: the stream key.
    :param maxlen: off by default. When set, each XADD trims the stream to about
        this many entries (``MAXLEN ~``). Trimming does not look at consumer
        groups: entries that no worker has read yet are deleted too, and those
        jobs are lost. Prefer the queue's own housekeeping.
    :param chunk_size: jobs per pipelined round trip in ``enqueue_bulk``; bounds
        the memory held for one round trip.
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        *,
        maxlen: int | None = None,
        chunk_size: int = _DEFAULT_CHUNK,
    ) -> None:
        if not isinstance(stream, str) or not stream:
            raise ConfigurationError(f"stream must be a non-empty str, not {stream!r}")
        if (
            isinstance(client, type)
            or isinstance(client, redis.client.Pipeline)
            or not hasattr(client, "pipeline")
            or not hasattr(client, "execute_command")
        ):
            raise ConfigurationError(
                f"client must be a redis.Redis client, not {type(client).__name__}"
            )
        if maxlen is not None and (
            isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1
        ):
            raise ConfigurationError(f"maxlen must be a positive int or None, not {maxlen!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigurationError(f"chunk_size must be a positive int, not {chunk_size!r}")
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self.chunk_size = chunk_size
        self._prefix: tuple[Any, ...] = (
            ("XADD", stream, "MAXLEN", "~", maxlen, "*") if maxlen else ("XADD", stream, "*")
        )

    def __repr__(self) -> str:
        return f"Producer(stream={self.stream!r})"

    def _command(self, job: Job) -> tuple[Any, ...]:
        if not isinstance(job, Job):
            raise EncodeError(
                f"enqueue takes a flowd.Job dataclass instance, not {type(job).__name__}"
            )
        args: list[Any] = list(self._prefix)
        for key, value in encode_job(job).items():
            args.append(key)
            args.append(value)
        if len(args) == len(self._prefix):
            # A stream entry needs a field; decoding ignores fields the class does not know.
            args += EMPTY_JOB_FIELD
        return tuple(args)

    def enqueue(self, job: Job) -> str:
        """Add one job; returns its stream id.

        :raises EncodeError: a field's value does not fit its annotation (nothing is sent).
        """
        return _as_str(self.client.execute_command(*self._command(job)))

    def enqueue_bulk(self, jobs: Iterable[Job]) -> list[str]:
        """Add many jobs in pipelined round trips (``transaction=False``); ids in stream order.

        Jobs are encoded and sent ``chunk_size`` at a time, so a generator of
        any length is fine. An empty input makes no call.

        :raises EncodeError: a job does not fit its class; the jobs of earlier chunks
            were already added, and their ids are on the error's ``enqueued`` attribute.
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
            with self.client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                ids.extend(_as_str(reply) for reply in pipe.execute())
        return ids


def _chunks(jobs: Iterator[Job], size: int) -> Iterator[list[Job]]:
    while chunk := list(islice(jobs, size)):
        yield chunk
