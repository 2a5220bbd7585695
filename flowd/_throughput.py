"""Per-minute throughput counters in Redis: written by workers, read by the dashboard.

Each minute of each stream has a HASH ``{stream}:stats:<minute>`` (minute =
Unix time // 60, by the writing worker's clock) with the fields
``processed`` (entries acked after a successful run) and ``failed`` (runs
that raised). Every write renews a two-hour expiry, so the history covers
every worker, survives a dashboard restart, and cleans itself up. A key per
minute, rather than one hash per stream, lets Redis expire old minutes on
its own (field expiry needs Redis 7.4).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._keys import derived_key

logger = logging.getLogger(__name__)

#: How long a minute's counters live, in seconds.
MINUTE_TTL = 7200


def minute_key(stream: str, minute: int) -> str:
    """The counters of one minute (Unix time // 60) of ``stream``."""
    return derived_key(stream, f"stats:{minute}")


def processed_commands(stream: str, count: int) -> list[tuple[Any, ...]]:
    """Commands that add ``count`` processed entries to this minute; for a flush pipeline."""
    key = minute_key(stream, int(time.time()) // 60)
    return [("HINCRBY", key, "processed", count), ("EXPIRE", key, MINUTE_TTL)]


def check_replies(replies: Sequence[Any], stream: str) -> None:
    """Log the first error among the replies of :func:`processed_commands`; never raises.

    The counters are statistics: an error there (e.g. an ACL user without
    HINCRBY) must never hold back the acks sent in the same round trip.
    """
    for reply in replies:
        if isinstance(reply, Exception):
            _cannot_count(stream, reply)
            return


def count_failed(client: Any, stream: str) -> None:
    """Add one failed run to this minute (one round trip); never raises."""
    key = minute_key(stream, int(time.time()) // 60)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(key, "failed", 1)
        pipe.expire(key, MINUTE_TTL)
        pipe.execute()
    except Exception as exc:
        # A statistic is not worth failing a job's bookkeeping for.
        _cannot_count(stream, exc)


_warned = threading.Event()


def _cannot_count(stream: str, exc: BaseException) -> None:
    if _warned.is_set():
        logger.debug("could not count jobs of %s: %s", stream, exc)
        return
    _warned.set()
    logger.warning(
        "could not write the throughput counters of %s (%s: %s); the dashboard's chart "
        "stays empty. Allow HINCRBY and EXPIRE on its {stream}:stats:* keys. "
        "Said once per process.",
        stream,
        type(exc).__name__,
        exc,
    )


@dataclass(frozen=True, slots=True)
class Minute:
    """The counters of one minute; ``start`` is its Unix time in seconds."""

    start: int
    processed: int
    failed: int


def history(client: Any, streams: Sequence[str], minutes: int = 60) -> list[Minute]:
    """The last ``minutes`` minutes (oldest first, the current one last), summed over ``streams``.

    One pipelined round trip of ``len(streams) * minutes`` HMGETs.
    """
    now = int(time.time()) // 60
    span = range(now - minutes + 1, now + 1)
    totals = {minute: [0, 0] for minute in span}
    if streams:
        pipe = client.pipeline(transaction=False)
        for stream in streams:
            for minute in span:
                pipe.hmget(minute_key(stream, minute), "processed", "failed")
        replies = pipe.execute()
        index = 0
        for _ in streams:
            for minute in span:
                processed, failed = replies[index]
                index += 1
                totals[minute][0] += int(processed or 0)
                totals[minute][1] += int(failed or 0)
    return [Minute(minute * 60, *totals[minute]) for minute in span]
