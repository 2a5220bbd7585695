"""ScheduledJobs: read and cancel a stream's scheduled jobs, and read its schedules' states."""

from __future__ import annotations

import builtins
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ._redis import scheduling as sched
from ._redis.session import check_client
from .errors import ConfigurationError

__all__ = ["ScheduleState", "ScheduledJob", "ScheduledJobs"]

logger = logging.getLogger(__name__)


def utc_from_ms(ms: int) -> datetime:
    """An aware UTC datetime from epoch milliseconds (exact, no float rounding)."""
    return datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)


def _value(raw: bytes | str) -> str | bytes:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


@dataclass(frozen=True, slots=True)
class ScheduledJob:
    """A job waiting for its time.

    :ivar id: its scheduled-job id (what ``enqueue(..., delay=...)`` returned).
    :ivar due: when it is moved into the stream, by Redis's clock (aware, UTC).
    :ivar fields: the stream fields it will be added with (text, or bytes when
        not UTF-8); None if its fields were deleted.
    """

    id: str
    due: datetime
    fields: dict[str, str | bytes] | None

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, ready for ``json.dumps`` (bytes shown with ``repr``)."""
        fields = None
        if self.fields is not None:
            fields = {k: v if isinstance(v, str) else repr(v) for k, v in self.fields.items()}
        return {"id": self.id, "due": self.due.isoformat(), "fields": fields}


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A periodic schedule as Redis knows it.

    :ivar spec: ``"cron <expression> tz=<zone>"`` or ``"every <seconds>"``.
    :ivar last_run: when its last tick was enqueued; None before the first.
    :ivar next_run: when its next tick is due; None if unknown.
    """

    name: str
    spec: str
    last_run: datetime | None
    next_run: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, ready for ``json.dumps``."""
        return {
            "name": self.name,
            "spec": self.spec,
            "last_run": None if self.last_run is None else self.last_run.isoformat(),
            "next_run": None if self.next_run is None else self.next_run.isoformat(),
        }


def parse_state(raw: bytes | str | None) -> dict[str, Any] | None:
    """A schedule's JSON state, or None when missing or unreadable."""
    if raw is None:
        return None
    try:
        state = json.loads(raw)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def _when(state: dict[str, Any], name: str) -> datetime | None:
    value = state.get(name)
    return utc_from_ms(int(value)) if isinstance(value, int | float) else None


def schedule_state(name: str, raw: bytes | str) -> ScheduleState | None:
    """A ScheduleState from its stored JSON; None (with a WARNING) if unreadable."""
    state = parse_state(raw)
    if state is None:
        logger.warning("schedule %s has an unreadable state: %r", name, raw)
        return None
    return ScheduleState(
        name, str(state.get("spec", "")), _when(state, "last"), _when(state, "next")
    )


class ScheduledJobs:
    """The scheduled jobs and periodic schedules of one stream (one partition).

    Thread-safe, like the client. Reads are a few round trips, not a snapshot.

    :param client: a ``redis.Redis`` or ``RedisCluster`` client.
    :param stream: the stream (for a partitioned queue, one partition's stream).
    """

    def __init__(self, client: Any, stream: str) -> None:
        self.client = check_client(client)
        if not isinstance(stream, str) or not stream:
            raise ConfigurationError(f"stream must be a non-empty str, not {stream!r}")
        self.stream = stream
        self._zset = sched.scheduled_key(stream)

    def __repr__(self) -> str:
        return f"ScheduledJobs(stream={self.stream!r})"

    def count(self) -> int:
        """How many jobs are waiting for their time (ZCARD)."""
        return int(self.client.zcard(self._zset))

    def list(self, offset: int = 0, limit: int = 100) -> list[ScheduledJob]:
        """Scheduled jobs in due order, from ``offset``, at most ``limit`` of them.

        :raises ConfigurationError: a negative offset or a limit below 1.
        """
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ConfigurationError(f"offset must be an int >= 0, not {offset!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit must be a positive int, not {limit!r}")
        members = self.client.zrange(self._zset, offset, offset + limit - 1, withscores=True)
        if not members:
            return []
        ids = [sched.text(member) for member, _ in members]
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(sched.job_key(self.stream, job_id))
            hashes = pipe.execute()
        out = []
        for job_id, (_, score), raw in zip(ids, members, hashes, strict=True):
            fields = {sched.text(k): _value(v) for k, v in raw.items()} if raw else None
            out.append(ScheduledJob(job_id, utc_from_ms(int(score)), fields))
        return out

    def cancel(self, job_id: str) -> bool:
        """Remove a job that is still scheduled (True); False if it is not (any more).

        :raises ConfigurationError: ``job_id`` is not a non-empty str.
        """
        if not isinstance(job_id, str) or not job_id:
            raise ConfigurationError(f"job_id must be a non-empty str, not {job_id!r}")
        return sched.cancel(self.client, self.stream, job_id)

    def schedule_states(self) -> builtins.list[ScheduleState]:
        """The periodic schedules that ran on this stream, by name (their last and next run).

        A schedule removed from the code keeps its last state here; it no longer fires.
        """
        raw = self.client.hgetall(sched.schedules_key(self.stream))
        states = (schedule_state(sched.text(k), v) for k, v in raw.items())
        return sorted((s for s in states if s is not None), key=lambda s: s.name)
