"""Expiry: a job that has not started by its deadline is never run.

``Producer.enqueue(job, expires=...)`` writes the deadline into the reserved
stream field ``flowd:expires`` (ms since the epoch), which the scheduled set,
retries and claims carry with the rest of the entry, and which no decoder
reads (it reads only its class's fields). A worker thread looks at it right
before it would call the worker, so a job that waited in the stream, in the
read-ahead buffer or for a permit is covered alike. Both ends use their wall
clock (``time.time()``): producers' and workers' clocks should agree (NTP).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from .._redis.fields import EXPIRES_FIELD
from .._redis.timeutil import to_seconds
from ..errors import ConfigurationError

__all__ = [
    "EXPIRED",
    "FIELD",
    "check_dead_letter_expired",
    "deadline_ms",
    "expiry_fields",
    "why_not_run",
]

#: The reason an expired job is dead-lettered with (``task.error``, the DLQ's flowd:reason).
EXPIRED = "expired"
#: The stream field, as the producer writes it.
FIELD = EXPIRES_FIELD.decode("ascii")

#: What ``expires`` accepts, as the errors say it.
_KINDS = "seconds (int or float > 0), a timedelta or a timezone-aware datetime"


def deadline_ms(expires: object, now: float) -> int:
    """The deadline ``enqueue(expires=...)`` names, in ms since the epoch.

    :param now: the enqueue call's time (``time.time()``): relative ``expires``
        counts from it.
    :raises ConfigurationError: not one of the accepted kinds, a naive datetime,
        a duration <= 0, or a datetime already past.
    """
    if isinstance(expires, datetime):
        if expires.tzinfo is None or expires.utcoffset() is None:
            raise ConfigurationError(
                f"expires must be {_KINDS}, not the naive datetime {expires!r} "
                "(give it a tzinfo, e.g. tzinfo=datetime.UTC)"
            )
        deadline = expires.timestamp()
        if deadline <= now:
            raise ConfigurationError(
                f"expires is in the past: {expires.isoformat()} (now is "
                f"{datetime.fromtimestamp(now, UTC).isoformat()}); the job would never run"
            )
        return int(deadline * 1000)
    if isinstance(expires, bool) or not isinstance(expires, int | float | timedelta):
        raise ConfigurationError(f"expires must be {_KINDS}, not {type(expires).__name__}")
    return int((now + to_seconds(expires, "expires")) * 1000)


def expiry_fields(
    expires: object, when: tuple[str, int] | None, now: float | None = None
) -> tuple[str, str] | tuple[()]:
    """The stream field pair that carries ``expires`` (none for None), checked.

    :param when: the job's start as ``flowd._redis.scheduling.enqueue_time`` gives it
        (None: at once); a deadline not after it is refused, as the job could never run.
    :raises ConfigurationError: see :func:`deadline_ms`; or ``expires`` is not
        after the job's ``delay`` or ``at``.
    """
    if expires is None:
        return ()
    now = time.time() if now is None else now
    deadline = deadline_ms(expires, now)
    if when is not None:
        mode, ms = when
        start = int(now * 1000) + ms if mode == "delay" else ms
        if deadline <= start:
            raise ConfigurationError(
                f"expires ({datetime.fromtimestamp(deadline / 1000, UTC).isoformat()}) is not "
                f"after the job's start ({datetime.fromtimestamp(start / 1000, UTC).isoformat()},"
                f" from {'delay' if mode == 'delay' else 'at'}): the job would never run"
            )
    return FIELD, str(deadline)


def why_not_run(raw: bytes, now: float) -> str | None:
    """Why a job whose ``flowd:expires`` field is ``raw`` must not start at ``now``
    (epoch seconds): :data:`EXPIRED`, the reason for a value that is not a deadline, or
    None: it may start."""
    try:
        deadline = int(raw)
    except ValueError:
        return f"unreadable {FIELD} field {raw[:40]!r} (a deadline in ms since the epoch)"
    return EXPIRED if now * 1000 >= deadline else None


def check_dead_letter_expired(value: object) -> bool:
    """``Queue(dead_letter_expired=...)``, checked: a bool."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"dead_letter_expired must be True or False, not {value!r}")
    return value
