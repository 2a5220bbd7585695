"""Public times are float seconds or timedelta; milliseconds only at the Redis boundary."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from ..errors import ConfigurationError

Seconds = float | int | timedelta


def to_seconds(value: Seconds, name: str, *, allow_zero: bool = False) -> float:
    """Normalise a duration argument, rejecting negative or non-numeric values."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"{name} must be seconds (int or float) or a timedelta, not {type(value).__name__}"
        )
    else:
        try:
            seconds = float(value)
        except OverflowError:
            raise ConfigurationError(f"{name} is too large: {value!r}") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ConfigurationError(f"{name} must be a finite number of seconds, not {value!r}")
    if seconds > threading.TIMEOUT_MAX:
        raise ConfigurationError(
            f"{name} is too large: {value!r} seconds is more than a thread can wait "
            f"({threading.TIMEOUT_MAX:.0f})"
        )
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be {bound} seconds, not {value!r}")
    return seconds


def to_ms(seconds: float) -> int:
    """Seconds to whole milliseconds for Redis, never rounding a positive time to 0."""
    ms = int(seconds * 1000)
    return ms if ms > 0 or seconds <= 0 else 1


def stop_timeout(value: object) -> float | None:
    """``stop(timeout)``'s argument: None or seconds; negative means 0 and infinite, or more
    than a thread can wait, means no limit (like ``Thread.join``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise ConfigurationError(f"timeout must be seconds or None, not {value!r}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds != seconds:
        raise ConfigurationError(f"timeout must be a number of seconds, not {value!r}")
    if seconds > threading.TIMEOUT_MAX:
        return None
    return max(0.0, seconds)


def remaining(deadline: float | None) -> float | None:
    """Seconds left until a ``time.monotonic()`` deadline (None: no deadline), never negative."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
