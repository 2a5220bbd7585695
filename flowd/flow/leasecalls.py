"""Per-key concurrency on the reader's round trips: the lease calls of one read's tasks
go with the next read (one round trip for both), or alone when no read follows.

A read batch's tasks wait for their call one reader step: read N, then N's lease call
and read N+1 together. That halves the reader's round trips, each of which also
waits for the GIL when it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .._redis.session import Session
from .keygate import Asking

__all__ = ["send_lease_calls"]

#: Whatever the caller keeps beside each asking (the reader: its read-ahead link).
T = TypeVar("T")


def send_lease_calls(
    session: Session,
    asks: list[tuple[T, Asking]],
    end: Callable[[T, Asking, Any], list[Any]],
    then: list[object] | None = None,
) -> tuple[list[tuple[T, list[Any]]], Any]:
    """Send the lease calls of ``asks``, then ``then`` (a command), in one round trip:
    (per asking, with its T, the tasks that got their lease from ``end(T, asking,
    reply)``; ``then``'s reply, None without it). ``asks`` is emptied.

    A failed round trip ends every asking with the exception (its tasks park; the
    keys loop asks again) and raises.
    """
    calls = [asking.call.framed for _, asking in asks if asking.call is not None]
    commands: list[Any] = [*calls, then] if then is not None else calls
    try:
        replies = session.call_many(commands) if commands else []
    except Exception as exc:
        for owner, asking in asks:
            end(owner, asking, exc)
        asks.clear()
        raise
    answers = iter(replies)
    granted = []
    for owner, asking in asks:
        reply = next(answers) if asking.call is not None else None
        granted.append((owner, end(owner, asking, reply)))
    asks.clear()
    return granted, (replies[-1] if then is not None else None)
