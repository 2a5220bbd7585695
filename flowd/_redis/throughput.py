"""Per-minute throughput counters in Redis: written by workers, read by the dashboard.

Each minute of each stream has two counters (minute = Unix time // 60, by
Redis's clock, so a worker whose own clock is off still counts in the right
minute): ``{stream}:stats:<minute>:processed`` (entries
acked after a successful run) and ``{stream}:stats:<minute>:failed`` (runs
that raised, counted where their reason is recorded: with a claimer). Every
write renews a two-hour expiry, so the history covers every worker, survives
a dashboard restart, and cleans itself up. Keys per minute, rather than one
hash per stream, let Redis expire old minutes on its own (field expiry needs
Redis 7.4); plain counters let one MGET read a stream's hour (its keys share
the stream's slot).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .keys import derived_key

logger = logging.getLogger(__name__)

#: How long a minute's counters live, in seconds.
MINUTE_TTL = 7200


class ServerClock:
    """Redis's clock as this process sees it: ``time.time()`` plus an offset learned from
    TIME replies (the acker sends one with each flush, in the same round trip)."""

    def __init__(self) -> None:
        self._offset: float | None = None

    @property
    def known(self) -> bool:
        return self._offset is not None

    def learn(self, reply: Any) -> None:
        """Take the offset from a TIME reply (seconds, microseconds); ignores anything else."""
        try:
            seconds, micros = reply
            self._offset = int(seconds) + int(micros) / 1e6 - time.time()
        except (TypeError, ValueError):
            logger.debug("not a TIME reply: %r", reply)

    def minute(self) -> int:
        return int(time.time() + (self._offset or 0.0)) // 60


#: The process's one view of Redis's clock (all streams of one deployment share a server
#: clock; with several servers, their clocks are as close as NTP keeps them).
CLOCK = ServerClock()


def minute_key(stream: str, minute: int, what: str) -> str:
    """The ``processed`` or ``failed`` counter of one minute (Unix time // 60) of ``stream``."""
    return derived_key(stream, f"stats:{minute}:{what}")


def processed_commands(stream: str, count: int) -> list[tuple[Any, ...]]:
    """Commands that add ``count`` processed entries to this minute; for a flush pipeline.

    The last is a TIME, whose reply :func:`check_replies` hands to :data:`CLOCK`.
    """
    key = minute_key(stream, CLOCK.minute(), "processed")
    return [("INCRBY", key, count), ("EXPIRE", key, MINUTE_TTL), ("TIME",)]


def check_replies(replies: Sequence[Any], stream: str) -> None:
    """Log the first error among the replies of the counter commands; never raises.

    The counters are statistics: an error there (e.g. an ACL user without
    INCRBY) must never hold back the acks sent in the same round trip.
    """
    for reply in replies:
        if isinstance(reply, Exception):
            _cannot_count(stream, reply)
            return
    if replies:
        CLOCK.learn(replies[-1])


def failed_commands(stream: str) -> list[tuple[Any, ...]]:
    """Commands that add one failed run to this minute; sent with the failure's record."""
    key = minute_key(stream, CLOCK.minute(), "failed")
    return [("INCRBY", key, 1), ("EXPIRE", key, MINUTE_TTL)]


_warned = threading.Event()


def _cannot_count(stream: str, exc: BaseException) -> None:
    if _warned.is_set():
        logger.debug("could not count jobs of %s: %s", stream, exc)
        return
    _warned.set()
    logger.warning(
        "could not write the throughput counters of %s (%s: %s); the dashboard's chart "
        "stays empty. Allow INCRBY and EXPIRE on its {stream}:stats:* keys. "
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


def server_minute(client: Any) -> int:
    """The current minute by Redis's clock (this host's if TIME cannot be asked)."""
    try:
        CLOCK.learn(client.time())
    except Exception as exc:  # a cluster client's TIME answers per node: keep what is known
        logger.debug("TIME failed (%s); the chart uses the last known offset", exc)
    return CLOCK.minute()


def history_by_stream(
    client: Any, streams: Sequence[str], minutes: int = 60
) -> dict[str, list[Minute]]:
    """The last ``minutes`` minutes of each stream (oldest first, the current one last).

    One pipelined round trip: an MGET of ``2 * minutes`` keys per stream, after a
    TIME (the minutes are Redis's, whatever this host's clock says).
    """
    now = server_minute(client)
    span = range(now - minutes + 1, now + 1)
    out: dict[str, list[Minute]] = {}
    if not streams:
        return out
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        prefix = derived_key(stream, "stats:")  # hash_tag() once, not per key
        keys = [f"{prefix}{m}:{what}" for m in span for what in ("processed", "failed")]
        pipe.execute_command("MGET", *keys)
    for stream, values in zip(streams, pipe.execute(), strict=True):
        counts = [int(v or 0) for v in values]
        out[stream] = [Minute(m * 60, counts[2 * i], counts[2 * i + 1]) for i, m in enumerate(span)]
    return out


def history(client: Any, streams: Sequence[str], minutes: int = 60) -> list[Minute]:
    """The last ``minutes`` minutes summed over ``streams`` (oldest first)."""
    now = server_minute(client)
    totals = [Minute(minute * 60, 0, 0) for minute in range(now - minutes + 1, now + 1)]
    return sum_minutes(totals, *history_by_stream(client, streams, minutes).values())


def sum_minutes(*series: list[Minute]) -> list[Minute]:
    """Minute-by-minute sums of series of the same span."""
    first = series[0]
    return [
        Minute(
            first[i].start,
            sum(s[i].processed for s in series),
            sum(s[i].failed for s in series),
        )
        for i in range(len(first))
    ]
