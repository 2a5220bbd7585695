"""The account of a bulk enqueue: what each pipelined chunk wrote, was refused or lost.

A bulk that stops part-way raises :class:`flowd.EnqueueError` built here, so the
caller can send again exactly the jobs certainly not written.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any, TypeVar

import redis.exceptions

from ..errors import EnqueueError

T = TypeVar("T")


class Unknown:
    """The outcome of a command sent on a connection that broke before its reply."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def written(reply: Any) -> bool:
    """A reply, not an error reply nor Unknown."""
    return not isinstance(reply, BaseException | Unknown)


def pipeline(client: Any, commands: list[list[Any]]) -> list[Any]:
    """One pipelined round trip (``transaction=False``): each command's reply, error
    reply, or, when the connection broke (after redis-py's own retries), Unknown."""
    try:
        with client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(pipe.execute(raise_on_error=False))
    except redis.exceptions.RedisError as exc:
        # Which of the commands ran before the break is not known: none is reported
        # as refused, so none is sent again as if certainly missing.
        return [Unknown(exc)] * len(commands)


class BulkAccount:
    """What enqueue_bulk knows so far: each input index written (its id), failed or unknown."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.failed: list[int] = []
        self.unknown: list[int] = []
        self.cause: BaseException | None = None
        self.count = 0  # input jobs accounted for

    def add(self, outcomes: list[Any]) -> None:
        """Account for one chunk: each job's id, error reply or Unknown, in input order."""
        for offset, outcome in enumerate(outcomes):
            index = self.count + offset
            if isinstance(outcome, Unknown):
                self.unknown.append(index)
                error = outcome.error
            elif isinstance(outcome, BaseException):
                self.failed.append(index)
                error = outcome
            else:
                self.ids.append(outcome)
                continue
            if self.cause is None:
                self.cause = error
        self.count += len(outcomes)

    def error(self, rest: Iterator[Any]) -> EnqueueError:
        """The EnqueueError of a bulk stopped here: the jobs never sent count as failed."""
        assert self.cause is not None
        never_sent = sum(1 for _ in rest)
        failed = [*self.failed, *range(self.count, self.count + never_sent)]
        return EnqueueError(self.ids, failed, self.unknown, self.cause)


def chunks(jobs: Iterator[T], size: int) -> Iterator[list[T]]:
    while chunk := list(islice(jobs, size)):
        yield chunk
