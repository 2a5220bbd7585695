"""Pause and resume: the consumers of a paused queue read and claim no new jobs.

The state lives in Redis, so it holds across every consumer and survives
restarts: one hash per queue, ``{emails}:paused``, derived from the queue's
base stream (a partitioned queue, or one with priority bands, has one pause
for all its streams). A field is a group's name, or ``*`` for every group of
the stream; its value is when it was paused (ms since the epoch, the caller's
clock; only shown, never compared).

Consumers ask a :class:`PauseWatch`, which reads the hash at most every
:data:`CHECK_EVERY` seconds, so the check costs no round trip per read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._redis.keys import derived_key
from .._redis.session import Session, check_client
from ..errors import ConfigurationError

__all__ = [
    "ALL_GROUPS",
    "CHECK_EVERY",
    "MAX_BLOCK",
    "PauseWatch",
    "is_paused",
    "pause",
    "pause_key",
    "paused_groups",
    "resume",
]

logger = logging.getLogger(__name__)

#: The field that pauses every group of the stream.
ALL_GROUPS = "*"
#: Seconds a consumer trusts the pause state it last read.
CHECK_EVERY = 0.25
#: Longest XREADGROUP block of a consumer without a claimer (which cannot hand back
#: what a read returns after a pause): such a read ends within CHECK_EVERY + MAX_BLOCK.
MAX_BLOCK = 0.5


def pause_key(stream: str) -> str:
    """The hash of the pause state of the queue whose (base) stream is ``stream``."""
    return derived_key(stream, "paused")


def _check(client: Any, stream: object, group: object) -> str:
    check_client(client)
    if not isinstance(stream, str) or not stream:
        raise ConfigurationError(f"stream must be a non-empty str, not {stream!r}")
    if group is None:
        return ALL_GROUPS
    if not isinstance(group, str) or not group or group == ALL_GROUPS:
        raise ConfigurationError(
            f"group must be a non-empty str other than {ALL_GROUPS!r}, or None for every "
            f"group, not {group!r}"
        )
    return group


def pause(client: Any, stream: str, group: str | None = None) -> bool:
    """Pause the queue ``stream`` for ``group`` (None: every group of the stream).

    Within a second, every consumer of the group stops reading and claiming
    new jobs; running jobs finish and are acked, and messages read ahead are
    handed back. The state lives in Redis until :func:`resume`: consumers
    started meanwhile start paused, and ``Queue.drain()`` returns 0.

    :param stream: the queue's stream (a partitioned queue's base name).
    :returns: True if this call paused it, False if it was paused already.
    :raises ConfigurationError: for an empty name, or a group named ``*``.
    """
    field = _check(client, stream, group)
    added = client.hset(pause_key(stream), field, str(int(time.time() * 1000)))
    return bool(added)


def resume(client: Any, stream: str, group: str | None = None) -> bool:
    """Lift a pause: ``group`` None lifts every pause of the stream (its own and each
    group's); a group lifts that group's own pause only, so while the whole stream
    is paused the group stays paused (a WARNING says so).

    :returns: True if a pause was lifted.
    :raises ConfigurationError: for an empty name, or a group named ``*``.
    """
    field = _check(client, stream, group)
    key = pause_key(stream)
    if field == ALL_GROUPS:
        return bool(client.delete(key))
    lifted = bool(client.hdel(key, field))
    if client.hget(key, ALL_GROUPS) is not None:
        logger.warning(
            "group %s of %s stays paused: the whole stream is paused (resume it without a group)",
            group,
            stream,
        )
    return lifted


def paused_groups(client: Any, stream: str, groups: Sequence[str]) -> frozenset[str]:
    """Which of ``groups`` of ``stream`` are paused by name, with ``*`` when every group is
    (one HMGET, bounded by the groups asked about)."""
    check_client(client)
    names = [ALL_GROUPS, *groups]
    reply = client.hmget(pause_key(stream), names)
    return frozenset(name for name, value in zip(names, reply, strict=True) if value is not None)


def is_paused(client: Any, stream: str, group: str | None = None) -> bool:
    """Whether ``group`` of the queue ``stream`` is paused (by its own pause or the
    stream's); with ``group`` None, whether the whole stream is."""
    field = _check(client, stream, group)
    reply = client.hmget(pause_key(stream), [field, ALL_GROUPS])
    return any(value is not None for value in reply)


class PauseWatch:
    """What the loops of one run ask before they read or claim: is the group paused?

    Reads the state at most every ``every`` seconds, on a session of its own
    (the pause key is in the base stream's slot, which a partition's node
    need not serve). Safe to share between the loops of a run: one of them
    reads while the others go on with what was read last. A failed read
    raises in the loop that made it (its backoff retries) and is tried again
    on the next call. Says at INFO when this consumer sees a pause and its end.
    """

    def __init__(
        self, client: Any, stream: str, group: str, consumer: str, every: float = CHECK_EVERY
    ) -> None:
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.every = every
        self._key = pause_key(stream)
        self._session = Session(client, self._key)
        self._lock = threading.Lock()
        self._state: bool | None = None  # None until first read
        self._checked = float("-inf")
        #: How many times this consumer saw the group resumed.
        self.resumes = 0
        self._on_resume: list[Callable[[], None]] = []

    def on_resume(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (quick, on whichever loop saw it) each time a resume is seen."""
        self._on_resume.append(callback)

    def paused(self) -> bool:
        """The group's pause state, at most ``every`` seconds old."""
        if time.monotonic() - self._checked < self.every:
            return bool(self._state)
        if not self._lock.acquire(blocking=False):
            return bool(self._state)  # another loop is reading it right now
        try:
            if time.monotonic() - self._checked < self.every:
                return bool(self._state)
            reply = self._session.call("HMGET", self._key, self.group, ALL_GROUPS)
            paused = any(value is not None for value in reply)
            self._checked = time.monotonic()
            self._note(paused)
            return paused
        finally:
            self._lock.release()

    def _note(self, paused: bool) -> None:
        before, self._state = self._state, paused
        if paused and before is not True:
            logger.info(
                "queue %s/%s is paused: consumer %s reads and claims no new jobs until it is "
                "resumed; running jobs finish",
                self.stream,
                self.group,
                self.consumer,
            )
        elif not paused and before is True:
            logger.info(
                "queue %s/%s resumed: consumer %s reads again",
                self.stream,
                self.group,
                self.consumer,
            )
            self.resumes += 1
            for callback in self._on_resume:
                callback()

    def close(self) -> None:
        """Close the session (a later call opens a new one)."""
        with self._lock:
            self._session.close()
