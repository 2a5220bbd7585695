"""stream_info: a JSON-friendly snapshot of a queue's stream, its groups and its DLQ."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._redis.keys import dead_letter_stream
from ._redis.replies import _text, as_map, id_key, parse_entries
from ._redis.scheduling import scheduled_key, schedules_key
from ._redis.session import (
    SAFE_EVICTION_POLICIES,
    Session,
    check_client,
    eviction_policy,
    is_nogroup,
)
from .errors import ConfigurationError
from .flow.limits import limit_field, limits_key, parse_limit
from .flow.pause import ALL_GROUPS, pause_key
from .scheduled import ScheduleState, schedule_state

__all__ = ["ConsumerInfo", "GroupInfo", "StreamInfo", "stream_info"]

logger = logging.getLogger(__name__)

#: Entries read per XRANGE call while counting a group's lag.
_LAG_PAGE = 1000


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer of a group (XINFO CONSUMERS).

    :ivar pending: messages delivered to it and not acked yet.
    :ivar idle_ms: milliseconds since it last read or claimed.
    :ivar active_limit: how many of its ``concurrency`` threads may run jobs at once now,
        as it last published (``Queue(adaptive_concurrency=...)``); None when it publishes
        nothing (adaptive concurrency off, not a flowd consumer, or stopped).
    :ivar concurrency: its threads, None with ``active_limit``.
    """

    name: str
    pending: int
    idle_ms: int
    active_limit: int | None = None
    concurrency: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, ready for ``json.dumps``."""
        return {
            "name": self.name,
            "pending": self.pending,
            "idle_ms": self.idle_ms,
            "active_limit": self.active_limit,
            "concurrency": self.concurrency,
        }

    def to_text(self) -> str:
        """The consumer's line of ``flowd info``."""
        line = f"consumer {self.name}: pending {self.pending}, idle {self.idle_ms} ms"
        if self.active_limit is not None:
            line += f", active limit {self.active_limit} of {self.concurrency}"
        return line


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """One consumer group of the stream.

    :ivar pending: messages delivered and not acked yet (the group's PEL).
    :ivar last_delivered_id: the id of the last entry delivered to the group.
    :ivar lag: entries of the stream not delivered to the group yet.
    :ivar lag_exact: False when counting the lag stopped at ``lag_scan_limit``:
        ``lag`` is then a lower bound.
    :ivar oldest_pending_id: the pending message with the smallest id, or None.
    :ivar oldest_pending_age_ms: milliseconds since it was added to the stream
        (the server's time minus the time in its id).
    :ivar oldest_pending_idle_ms: milliseconds since it was last delivered.
    :ivar oldest_pending_deliveries: how often it was delivered.
    :ivar paused: True while the group is paused (its own pause or the stream's,
        see :func:`flowd.pause`): its consumers read and claim no new jobs.
    """

    name: str
    consumers: tuple[ConsumerInfo, ...]
    pending: int
    last_delivered_id: str
    lag: int
    lag_exact: bool
    oldest_pending_id: str | None
    oldest_pending_age_ms: int | None
    oldest_pending_idle_ms: int | None
    oldest_pending_deliveries: int | None
    paused: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, ready for ``json.dumps``."""
        return {
            "name": self.name,
            "consumers": [consumer.to_dict() for consumer in self.consumers],
            "pending": self.pending,
            "last_delivered_id": self.last_delivered_id,
            "lag": self.lag,
            "lag_exact": self.lag_exact,
            "oldest_pending_id": self.oldest_pending_id,
            "oldest_pending_age_ms": self.oldest_pending_age_ms,
            "oldest_pending_idle_ms": self.oldest_pending_idle_ms,
            "oldest_pending_deliveries": self.oldest_pending_deliveries,
            "paused": self.paused,
        }


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream, its consumer groups and its dead-letter stream, as read by :func:`stream_info`.

    :ivar length: entries in the stream (0 for a missing stream).
    :ivar first_id: the oldest entry's id, None when the stream is empty.
    :ivar last_id: the newest entry's id, None when the stream is empty.
    :ivar dlq_length: entries in the dead-letter stream.
    :ivar scheduled: jobs waiting for their time (``delay``/``at``) in the stream's
        sorted set of scheduled jobs.
    :ivar schedules: the periodic schedules that ran on this stream, with their
        last and next run.
    :ivar eviction_policy: the server's ``maxmemory-policy`` (None if it cannot
        be read); any ``allkeys-*`` policy can evict the stream and lose jobs.
    :ivar paused: True while every group of the stream is paused (``flowd.pause``
        without a group); a group paused alone shows on its :class:`GroupInfo`.
    """

    stream: str
    length: int
    first_id: str | None
    last_id: str | None
    dlq_stream: str
    dlq_length: int
    groups: tuple[GroupInfo, ...]
    scheduled: int = 0
    schedules: tuple[ScheduleState, ...] = ()
    eviction_policy: str | None = None
    paused: bool = False

    @property
    def eviction_unsafe(self) -> bool:
        """True when the server may evict the stream under memory pressure."""
        return self.eviction_policy is not None and (
            self.eviction_policy not in SAFE_EVICTION_POLICIES
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, ready for ``json.dumps``."""
        return {
            "stream": self.stream,
            "length": self.length,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "dlq_stream": self.dlq_stream,
            "dlq_length": self.dlq_length,
            "groups": [group.to_dict() for group in self.groups],
            "scheduled": self.scheduled,
            "schedules": [schedule.to_dict() for schedule in self.schedules],
            "eviction_policy": self.eviction_policy,
            "paused": self.paused,
        }

    def to_text(self) -> str:
        """A few lines for people: the stream, then each group and its consumers."""
        span = f" ({self.first_id} .. {self.last_id})" if self.first_id else ""
        lines = [
            f"stream {self.stream}: {self.length} entries{span}; "
            f"dead letters: {self.dlq_length} in {self.dlq_stream}"
        ]
        if self.paused:
            lines.append(f"paused: every group (flowd resume {self.stream})")
        if self.scheduled or self.schedules:
            lines.append(f"scheduled: {self.scheduled} jobs waiting for their time")
        for schedule in self.schedules:
            last = schedule.last_run.isoformat() if schedule.last_run else "never"
            nxt = schedule.next_run.isoformat() if schedule.next_run else "unknown"
            lines.append(f"schedule {schedule.name} ({schedule.spec}): last {last}, next {nxt}")
        if self.eviction_unsafe:
            lines.append(
                f"WARNING: maxmemory-policy is {self.eviction_policy}: Redis may evict this "
                "stream under memory pressure and lose its jobs; use noeviction"
            )
        if not self.groups:
            lines.append("no consumer groups")
        for group in self.groups:
            lag = f"{group.lag}" if group.lag_exact else f">= {group.lag}"
            line = (
                f"group {group.name}: pending {group.pending}, lag {lag}, "
                f"last delivered {group.last_delivered_id}"
            )
            if group.oldest_pending_id is not None:
                line += (
                    f"; oldest pending {group.oldest_pending_id} "
                    f"(age {group.oldest_pending_age_ms} ms, idle {group.oldest_pending_idle_ms} "
                    f"ms, {group.oldest_pending_deliveries} deliveries)"
                )
            if group.paused:
                line += "; paused"
            lines.append(line)
            lines.extend(f"  {consumer.to_text()}" for consumer in group.consumers)
        return "\n".join(lines)


def _raise_errors(replies: Sequence[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _check_name(value: object, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty str, not {value!r}")


def _first_id(reply: Any) -> str | None:
    entries = parse_entries(reply)
    return entries[0][0] if entries else None


def stream_info(
    client: Any,
    stream: str,
    *,
    group: str | None = None,
    dlq_stream: str | None = None,
    lag_scan_limit: int = 10_000,
    base_stream: str | None = None,
) -> StreamInfo:
    """Read the state of a queue's stream: its length, groups, consumers, lag and DLQ.

    Works on Redis 6.2 and 7.x, with or without ``decode_responses``. A
    missing stream reads as empty, with no groups. The reads are a few
    pipelined round trips, not one snapshot: under load, numbers of different
    commands may be a moment apart. The result holds no connection details.

    A group's lag comes from XINFO GROUPS on Redis 7; Redis 6.2 does not
    report it, and 7.x not after some deletions. It is then counted with
    XRANGE after the group's last delivered id, at most ``lag_scan_limit``
    entries; past that, ``lag_exact`` is False and ``lag`` a lower bound.

    :param client: a ``redis.Redis`` client.
    :param stream: the queue's stream.
    :param group: report only this group (absent from the result if it does not
        exist); default: every group.
    :param dlq_stream: the dead-letter stream; defaults to ``{stream}:dead``.
    :param lag_scan_limit: most entries read to count one group's lag.
    :param base_stream: the queue's stream when ``stream`` is one of its partitions:
        its pause state and consumers' active limits are the queue's (default: ``stream``'s).
    :raises ConfigurationError: for an empty name or a bad ``lag_scan_limit``.
    :raises RedisVersionError: the server is older than 6.2.
    """
    check_client(client)
    _check_name(stream, "stream")
    if group is not None:
        _check_name(group, "group")
    if dlq_stream is not None:
        _check_name(dlq_stream, "dlq_stream")
    if (
        isinstance(lag_scan_limit, bool)
        or not isinstance(lag_scan_limit, int)
        or lag_scan_limit < 1
    ):
        raise ConfigurationError(f"lag_scan_limit must be a positive int, not {lag_scan_limit!r}")
    if base_stream is not None:
        _check_name(base_stream, "base_stream")
    dlq = dead_letter_stream(stream) if dlq_stream is None else dlq_stream
    session = Session(client, stream)
    try:
        info = _read(session, stream, group, dlq, lag_scan_limit)
    finally:
        session.close()
    # The queue's pause state and active limits, in one round trip through the client: a
    # partition's base stream may live on another cluster node.
    base = stream if base_stream is None else base_stream
    names = [ALL_GROUPS, *(g.name for g in info.groups)]
    shown = [(g.name, c.name) for g in info.groups for c in g.consumers]
    pipe = client.pipeline(transaction=False)
    pipe.hmget(pause_key(base), names)
    if shown:  # the listed consumers' fields only: the hash may hold stopped ones too
        pipe.hmget(limits_key(base), [limit_field(*pair) for pair in shown])
    flags, *found = pipe.execute(raise_on_error=False)
    _raise_errors([flags])
    paused = {name for name, flag in zip(names, flags, strict=True) if flag is not None}
    values = found[0] if found and isinstance(found[0], list) else []  # an error: none shown
    now_ms = int(time.time() * 1000)
    limits = {pair: parse_limit(value, now_ms) for pair, value in zip(shown, values, strict=False)}
    every = ALL_GROUPS in paused
    groups = [
        dataclasses.replace(
            g,
            paused=every or g.name in paused,
            consumers=tuple(_limited(c, limits.get((g.name, c.name))) for c in g.consumers),
        )
        for g in info.groups
    ]
    return dataclasses.replace(info, paused=every, groups=tuple(groups))


def _limited(consumer: ConsumerInfo, limit: tuple[int, int] | None) -> ConsumerInfo:
    """``consumer`` with the active limit it published, if any."""
    if limit is None:
        return consumer
    return dataclasses.replace(consumer, active_limit=limit[0], concurrency=limit[1])


def _read(
    session: Session, stream: str, only: str | None, dlq: str, lag_scan_limit: int
) -> StreamInfo:
    replies = session.call_many(
        [
            ("TIME",),
            ("XLEN", stream),
            ("XRANGE", stream, "-", "+", "COUNT", 1),
            ("XREVRANGE", stream, "+", "-", "COUNT", 1),
            ("XLEN", dlq),
            ("EXISTS", stream),
            ("XINFO", "GROUPS", stream),
            ("ZCARD", scheduled_key(stream)),
            ("HGETALL", schedules_key(stream)),
        ]
    )
    now, length, first, last, dlq_length, exists, groups_reply, scheduled, states = replies
    _raise_errors([now, length, first, last, dlq_length, exists, scheduled, states])
    info = StreamInfo(
        stream=stream,
        length=int(length),
        first_id=_first_id(first),
        last_id=_first_id(last),
        dlq_stream=dlq,
        dlq_length=int(dlq_length),
        groups=(),
        scheduled=int(scheduled),
        schedules=_schedules(states),
        eviction_policy=eviction_policy(session),
    )
    if not int(exists):
        return info
    if isinstance(groups_reply, Exception):
        if "no such key" in str(groups_reply):  # deleted a moment ago
            return info
        raise groups_reply
    raw_groups = [as_map(raw) for raw in groups_reply]
    if only is not None:
        raw_groups = [raw for raw in raw_groups if _text(raw["name"]) == only]
    if not raw_groups:
        return info
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
    commands: list[tuple[Any, ...]] = []
    for raw in raw_groups:
        commands.append(("XINFO", "CONSUMERS", stream, raw["name"]))
        commands.append(("XPENDING", stream, raw["name"], "-", "+", 1))
    replies = session.call_many(commands)
    groups: list[GroupInfo] = []
    for raw, consumers, oldest in zip(raw_groups, replies[::2], replies[1::2], strict=True):
        if isinstance(consumers, Exception) or isinstance(oldest, Exception):
            error = consumers if isinstance(consumers, Exception) else oldest
            if is_nogroup(error):  # destroyed a moment ago
                continue
            raise error
        groups.append(_group(session, info, raw, consumers, oldest, now_ms, lag_scan_limit))
    return dataclasses.replace(info, groups=tuple(groups))


def _schedules(reply: Any) -> tuple[ScheduleState, ...]:
    states = (schedule_state(_text(name), raw) for name, raw in as_map(reply).items())
    return tuple(sorted((s for s in states if s is not None), key=lambda s: s.name))


def _group(
    session: Session,
    info: StreamInfo,
    raw: dict[str, Any],
    consumers_reply: Any,
    oldest_reply: Any,
    now_ms: int,
    lag_scan_limit: int,
) -> GroupInfo:
    consumers = []
    for item in consumers_reply:
        consumer = as_map(item)
        consumers.append(
            ConsumerInfo(
                name=_text(consumer["name"]),
                pending=int(consumer["pending"]),
                idle_ms=int(consumer["idle"]),
            )
        )
    last_delivered = _text(raw["last-delivered-id"])
    server_lag = raw.get("lag")
    if server_lag is not None:
        lag, exact = int(server_lag), True
    else:
        lag, exact = _count_lag(session, info, last_delivered, lag_scan_limit)
    oldest_id = oldest_age = oldest_idle = oldest_deliveries = None
    if oldest_reply:
        entry = oldest_reply[0]
        oldest_id = _text(entry[0])
        oldest_age = max(0, now_ms - id_key(oldest_id)[0])
        oldest_idle = int(entry[2])
        oldest_deliveries = int(entry[3])
    return GroupInfo(
        name=_text(raw["name"]),
        consumers=tuple(consumers),
        pending=int(raw["pending"]),
        last_delivered_id=last_delivered,
        lag=lag,
        lag_exact=exact,
        oldest_pending_id=oldest_id,
        oldest_pending_age_ms=oldest_age,
        oldest_pending_idle_ms=oldest_idle,
        oldest_pending_deliveries=oldest_deliveries,
    )


def _count_lag(
    session: Session, info: StreamInfo, last_delivered: str, limit: int
) -> tuple[int, bool]:
    """Entries after ``last_delivered``: (count, exact), reading at most ``limit`` entries."""
    if info.first_id is None or info.last_id is None:
        return 0, True
    after = id_key(last_delivered)
    if after >= id_key(info.last_id):
        return 0, True
    if after < id_key(info.first_id):
        return info.length, True
    count, start = 0, "(" + last_delivered
    while count < limit:
        page = min(_LAG_PAGE, limit - count)
        entries = parse_entries(session.call("XRANGE", info.stream, start, "+", "COUNT", page))
        count += len(entries)
        if len(entries) < page:
            return count, True
        start = "(" + entries[-1][0]
    more = session.call("XRANGE", info.stream, start, "+", "COUNT", 1)
    if more:
        logger.debug(
            "lag of a group on %s is at least %d; stopped counting at lag_scan_limit",
            info.stream,
            count,
        )
    return count, not more
