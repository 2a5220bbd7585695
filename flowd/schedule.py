"""Schedule: a periodic job (cron or every N seconds) that fires once per tick, cluster-wide."""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._codec.plan import field_appender
from ._redis import scheduling as sched
from ._redis.session import Session
from ._redis.timeutil import Seconds, to_ms, to_seconds
from .errors import ConfigurationError, EncodeError
from .job import Job
from .scheduled import parse_state, utc_from_ms

__all__ = ["Schedule"]

logger = logging.getLogger(__name__)

#: After a job factory raised, its schedule is tried again this many seconds later.
_FACTORY_RETRY = 5.0


def job_fields(job: object) -> list[Any]:
    """The flat stream fields of a Job instance (``flowd:empty`` for a job with none)."""
    if not isinstance(job, Job):
        raise EncodeError(f"a schedule's job must be a flowd.Job instance, not {job!r}")
    args: list[Any] = []
    field_appender(type(job))(job, args)
    return args or ["flowd:empty", "1"]


def _zone(tz: object) -> ZoneInfo:
    if not isinstance(tz, str) or not tz:
        raise ConfigurationError(f"tz must be a time zone name such as 'Europe/Paris', not {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"tz {tz!r} is not a known time zone: {exc}") from None


def _check_cron(expression: object, zone: ZoneInfo) -> str:
    if not isinstance(expression, str) or not expression.strip():
        raise ConfigurationError(f"cron must be a cron expression, not {expression!r}")
    try:
        from cronsim import CronSim, CronSimError
    except ImportError:
        raise ConfigurationError(
            "cron schedules need the cron extra: pip install 'flowd-queue[cron]'"
        ) from None
    try:
        CronSim(expression, datetime.now(zone))
    except CronSimError as exc:
        raise ConfigurationError(f"cron {expression!r} is not a valid expression: {exc}") from None
    return " ".join(expression.split())


class Schedule:
    """A job enqueued periodically, by cron expression or every N seconds.

    Pass schedules to ``Queue(..., schedules=[...])``: every running queue of
    the stream takes part, and each tick is enqueued exactly once however
    many processes run (the decision is an atomic script on Redis's clock;
    the state lives in Redis, in ``{stream}:schedules``). Ticks missed while
    nothing ran collapse into one run. Runs of an ``every`` schedule are at
    least ``every`` apart, across restarts; a new one first runs ``every``
    after it is first started. A schedule removed from the code stops.

    >>> Schedule("nightly", Report(), cron="0 3 * * *", tz="Europe/Paris")
    >>> Schedule("ping", Ping, every=60)

    :param name: unique among the queue's schedules; its state is kept under it.
    :param job: a Job instance, or a callable returning one (called per tick).
    :param cron: a cron expression (needs the ``cron`` extra), evaluated in ``tz``,
        across daylight-saving changes: a skipped time runs when the clock jumps,
        a repeated one once (hourly expressions run in both repeated hours).
    :param every: seconds or a timedelta between runs.
    :param tz: the IANA time zone of ``cron``.
    :raises ConfigurationError: bad arguments, an invalid expression or an unknown zone.
    :raises EncodeError: ``job`` is a Job whose fields do not fit its class.
    """

    def __init__(
        self,
        name: str,
        job: Job | Callable[[], Job],
        *,
        cron: str | None = None,
        every: Seconds | None = None,
        tz: str = "UTC",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a schedule's name must be a non-empty str, not {name!r}")
        self.name = name
        self.zone = _zone(tz)
        self.tz = tz
        if (cron is None) == (every is None):
            raise ConfigurationError(
                f"schedule {name!r} needs exactly one of cron and every (cron={cron!r}, "
                f"every={every!r})"
            )
        self.cron: str | None = None
        self.every: float | None = None
        if cron is not None:
            self.cron = _check_cron(cron, self.zone)
            self.spec = f"cron {self.cron} tz={tz}"
        else:
            self.every = to_seconds(every, "every")  # type: ignore[arg-type]
            self.spec = f"every {self.every:g}"
        self._fields: list[Any] | None = None
        if isinstance(job, Job):
            self._fields = job_fields(job)
        elif not callable(job):
            raise ConfigurationError(
                f"a schedule's job must be a flowd.Job instance or a callable returning one, "
                f"not {job!r}"
            )
        self.job = job
        self._retry_at = 0.0

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, {self.spec!r})"

    def next_after(self, ms: int) -> int:
        """The first tick strictly after ``ms`` (epoch milliseconds), in epoch milliseconds."""
        if self.every is not None:
            return ms + to_ms(self.every)
        from cronsim import CronSim

        start = utc_from_ms(ms).astimezone(self.zone)
        tick = next(CronSim(self.cron or "", start))
        return int(tick.timestamp() * 1000)

    def fields(self) -> list[Any]:
        """This tick's stream fields (calls the job factory, if ``job`` is one)."""
        if self._fields is not None:
            return self._fields
        return job_fields(self.job())  # type: ignore[operator]


def check_schedules(schedules: object) -> tuple[Schedule, ...]:
    """``Queue(schedules=...)``: a sequence of Schedules with distinct names."""
    if isinstance(schedules, Schedule) or not isinstance(schedules, Sequence | set | frozenset):
        raise ConfigurationError(f"schedules must be a list of flowd.Schedule, not {schedules!r}")
    out = tuple(schedules)
    names: set[str] = set()
    for item in out:
        if not isinstance(item, Schedule):
            raise ConfigurationError(f"schedules must hold flowd.Schedule objects, not {item!r}")
        if item.name in names:
            raise ConfigurationError(f"two schedules are named {item.name!r}")
        names.add(item.name)
    return out


def stream_of(streams: Sequence[str], name: str) -> str:
    """The partition that runs a schedule: one per schedule, so its state and its
    stream share a slot."""
    if len(streams) == 1:
        return streams[0]
    return streams[zlib.crc32(name.encode("utf-8")) % len(streams)]


def _many(target: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    if isinstance(target, Session):
        replies = target.call_many(commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies
    with target.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute())


def fire_schedules(target: Any, stream: str, schedules: Sequence[Schedule]) -> int | None:
    """Enqueue the due ticks of ``schedules`` into ``stream``; returns the Redis-clock ms of
    the earliest next tick, or None when a schedule should be looked at again at once.

    Each tick's enqueue and its state update are one script, compare-and-set on
    the state read here and due by Redis's ``TIME``: however many processes
    call this, a tick is enqueued once.

    :param target: a :class:`Session` or a redis-py client.
    """
    if not schedules:
        return None
    key = sched.schedules_key(stream)
    now, raws = _many(target, [("TIME",), ("HMGET", key, *(s.name for s in schedules))])
    t0 = int(now[0]) * 1000 + int(now[1]) // 1000
    earliest: int | None = None
    for schedule, raw in zip(schedules, raws, strict=True):
        nxt = _fire_one(target, stream, key, schedule, raw, t0)
        if nxt is None:
            return None
        earliest = nxt if earliest is None else min(earliest, nxt)
    return earliest


def _fire_one(
    target: Any, stream: str, key: str, schedule: Schedule, raw: bytes | str | None, t0: int
) -> int | None:
    read = sched.text(raw) if raw is not None else ""
    state = parse_state(raw)
    spec_json = json.dumps(schedule.spec)
    due = state.get("next") if state is not None else None
    if state is None or state.get("spec") != schedule.spec or not isinstance(due, int):
        last = state.get("last") if state is not None else None
        last = last if isinstance(last, int) else None
        nxt = schedule.next_after(t0 if last is None else last)
        new_state = json.dumps({"last": last, "next": nxt, "spec": schedule.spec})
        sched.FIRE(target, [key, stream], [schedule.name, read, "", new_state, "", "", spec_json])
        return nxt
    if due > t0:
        return due
    if time.monotonic() < schedule._retry_at:
        return t0 + to_ms(_FACTORY_RETRY)
    try:
        fields = schedule.fields()
    except Exception:
        schedule._retry_at = time.monotonic() + _FACTORY_RETRY
        logger.exception(
            "schedule %s on %s: its job could not be made; trying again in %.0fs",
            schedule.name,
            stream,
            _FACTORY_RETRY,
        )
        return t0 + to_ms(_FACTORY_RETRY)
    after = "" if schedule.every is not None else str(schedule.next_after(max(t0, due)))
    every = "" if schedule.every is None else str(to_ms(schedule.every))
    reply = sched.FIRE(
        target, [key, stream], [schedule.name, read, due, after, every, spec_json, *fields]
    )
    if int(reply[0]) == 1:
        logger.info(
            "schedule %s fired: enqueued %s on %s", schedule.name, sched.text(reply[1]), stream
        )
    return None
