"""Backoff: how long a failed job waits before its next run."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._redis.timeutil import Seconds, to_seconds
from .errors import ConfigurationError

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True, init=False)
class Backoff:
    """Exponential backoff with jitter, for ``Claimer(backoff=...)``.

    After the n-th failed run of a message, its next run starts after
    ``min(initial * factor ** (n - 1), maximum)`` seconds, spread by
    ± ``jitter`` as a fraction of that (0.1: ±10 %), so that jobs that failed
    together do not all run again at the same instant.

    >>> Backoff(initial=1, factor=2, maximum=60, jitter=0).delay(3)
    4.0

    :param initial: seconds (or a timedelta) before the second run.
    :param factor: growth per further failure, >= 1.
    :param maximum: the longest wait, seconds or a timedelta, >= ``initial``.
    :param jitter: a fraction from 0 (none) to 1 (exclusive).
    :raises ConfigurationError: for any other value.
    """

    initial: float
    factor: float
    maximum: float
    jitter: float

    def __init__(
        self,
        initial: Seconds = 1.0,
        factor: float = 2.0,
        maximum: Seconds = 3600.0,
        jitter: float = 0.1,
    ) -> None:
        # Frozen: set through object.__setattr__, times as float seconds.
        initial = to_seconds(initial, "initial")
        maximum = to_seconds(maximum, "maximum")
        if maximum < initial:
            raise ConfigurationError(f"maximum ({maximum}s) must be >= initial ({initial}s)")
        factor = _number(factor, "factor")
        if not 1.0 <= factor < float("inf"):
            raise ConfigurationError(f"factor must be a finite number >= 1, not {factor!r}")
        jitter = _number(jitter, "jitter")
        if not 0.0 <= jitter < 1.0:
            raise ConfigurationError(f"jitter must be >= 0 and < 1, not {jitter!r}")
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "maximum", maximum)
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "jitter", jitter)

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed run (1 for the first)."""
        try:
            base = min(self.initial * self.factor ** max(failures - 1, 0), self.maximum)
        except OverflowError:
            base = self.maximum
        if not self.jitter:
            return base
        return base * (1.0 + random.uniform(-self.jitter, self.jitter))


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, not {value!r}")
    return float(value)
