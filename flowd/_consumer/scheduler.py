"""The scheduler loop of one stream: moves due jobs into it and fires its schedules."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .._redis.records import STATE_TTL_MS
from .._redis.scheduling import (
    MOVE_BATCH,
    RELEASE,
    UNIQUE_FIELD,
    move_all_due,
    move_due,
    unique_key,
)
from .._redis.session import Session
from ..hooks import Hooks
from ..schedule import Schedule, fire_schedules, stream_of
from ..task import Task
from .context import StreamContext

logger = logging.getLogger(__name__)

_UNIQUE = UNIQUE_FIELD.encode("ascii")

#: Most seconds between two looks at the sorted set: a job scheduled by another
#: process starts within about this long after its time (with the defaults, < 1 s).
POLL_INTERVAL = 0.5

#: Least wait between two steps that found nothing due, so a loop never spins.
_MIN_WAIT = 0.005


class SchedulerLoop:
    """One step: move a batch of due jobs, fire due schedules, then wait until the
    earliest known due time (at most ``poll`` seconds), unless more are due already."""

    def __init__(
        self,
        ctx: StreamContext,
        schedules: Sequence[Schedule] = (),
        *,
        poll: float = POLL_INTERVAL,
        batch: int = MOVE_BATCH,
        alias_ttl_ms: int = STATE_TTL_MS,
    ) -> None:
        self.stream = ctx.stream
        self.alias_ttl_ms = alias_ttl_ms
        self.session = ctx.redis
        self.stop = ctx.stop
        self.schedules = tuple(schedules)
        self.poll = poll
        self.batch = batch

    def step(self) -> bool:
        result = move_due(
            self.session, self.stream, batch=self.batch, alias_ttl_ms=self.alias_ttl_ms
        )
        if result.more:
            return True
        wait = self.poll
        if result.next_due_ms is not None:
            wait = min(wait, (result.next_due_ms - result.now_ms) / 1000)
        if self.schedules:
            # None: a tick was fired (or raced): look once more for the next one.
            nxt = fire_schedules(self.session, self.stream, self.schedules)
            if nxt is None:
                nxt = fire_schedules(self.session, self.stream, self.schedules)
            if nxt is not None:
                wait = min(wait, (nxt - result.now_ms) / 1000)
        self.stop.wait(max(wait, _MIN_WAIT))
        return True


def schedules_of(
    stream: str, schedules: Sequence[Schedule], streams: Sequence[str]
) -> list[Schedule]:
    """The schedules that ``stream`` (one partition of ``streams``) fires."""
    return [s for s in schedules if stream_of(streams, s.name) == stream]


def move_due_before_drain(
    session: Session,
    stream: str,
    schedules: Sequence[Schedule],
    streams: Sequence[str],
    alias_ttl_ms: int = STATE_TTL_MS,
) -> None:
    """drain(): enqueue due schedule ticks, then move every due scheduled job."""
    mine = schedules_of(stream, schedules, streams)
    if mine and fire_schedules(session, stream, mine) is None:
        fire_schedules(session, stream, mine)
    move_all_due(session, stream, alias_ttl_ms=alias_ttl_ms)


class UniqueRelease(Hooks):
    """Frees a job's ``unique_key`` once it was dead-lettered (as a hook) or succeeded
    (the stream's dispatcher calls :meth:`release` with the ack, for the jobs that
    carry a key: as a success hook it would cost every job a call).

    Without this the key would still be free for the next enqueue (which checks
    that its holder is scheduled, waiting or running), but its string would stay
    in Redis.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    @staticmethod
    def holds_key(fields: Any) -> bool:
        """Whether an entry with these fields was enqueued with a ``unique_key``."""
        return _UNIQUE in fields

    def on_dead_letter(self, task: Task[Any]) -> None:
        self.release(task)

    def release(self, task: Task[Any]) -> None:
        """Free the task's unique key if that job still holds it; never raises (it runs
        on a worker thread, after the job, where an exception would end the thread)."""
        key = task.fields.get(_UNIQUE)
        if key is None:
            return
        try:
            name = unique_key(task.stream, key.decode("utf-8", "surrogateescape"))
            RELEASE(self.client, [name], [task.id])
        except Exception as exc:
            logger.info("could not free the unique key of %s (%s); enqueue frees it", task.id, exc)
