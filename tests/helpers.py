"""Small helpers shared by the tests: polling with a deadline, and sample jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flowd

__all__ = ["Email", "Numbered", "wait_until"]


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that value.

    :raises AssertionError: ``predicate`` stayed falsy for ``timeout`` seconds; the
        message names the predicate (or uses ``message``) and its last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(
                f"condition not met within {timeout}s: {what} (last value: {value!r})"
            )
        time.sleep(interval)


@dataclass
class Email(flowd.Job):
    """The job of DESIGN.md's examples."""

    to: str
    subject: str
    attempt: int = 0
    cc: str | None = None


@dataclass
class Numbered(flowd.Job):
    """A one-field job whose ``n`` tells jobs apart and shows their order."""

    n: int
