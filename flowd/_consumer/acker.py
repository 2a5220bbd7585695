"""Acker: batches XACKs from worker threads into pipelined round trips."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .._redis import throughput as _throughput
from .._redis.keys import derived_key, runs_key
from .._redis.records import ACK_WITH_RECORDS, RECORDS_PER_CALL, ack_call, packed_ack_call
from .._redis.session import Session, is_noscript
from ..flow.keylimit import RELEASE, RELEASE_ONE, KeyLeases, Name
from .threads import Backoff

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: ids per XACK command; several commands go in one pipelined round trip.
ACK_CHUNK = 1000

#: What the acker queues: an id, or a success's (id, result record).
Queued = str | tuple[str, str]


class Acker:
    """Acknowledges finished messages in batches on a thread of its own.

    ``add`` is cheap and thread-safe (a deque append). The thread flushes as
    soon as it is woken, so a batch is whatever finished during the previous
    round trip: no added latency when idle, large batches under load. A
    failed flush is retried with backoff and never dropped; ``close`` flushes
    what is left, and whatever it cannot write stays pending in Redis, to be
    delivered again.
    """

    def __init__(
        self,
        client: Any,
        stream: str,
        group: str,
        errors_key: str,
        result_ttl_ms: int | None = None,
    ) -> None:
        self.stream = stream
        self.group = group
        self.errors_key = errors_key
        self.tracebacks_key = derived_key(stream, f"tracebacks:{group}")
        self.runs_key = runs_key(stream, group)
        #: Queued ids; with results kept, a success's (id, record), queued as one item so
        #: a flush that takes an id has its record too and writes both in one script.
        self._ids: collections.deque[Queued] = collections.deque()
        self.result_ttl_ms = result_ttl_ms
        #: items taken from _ids and not written yet; changed and read under _lock.
        self._flushing: list[Queued] = []
        self._lock = threading.Lock()
        self._retried: collections.deque[str] = collections.deque()
        #: Per-key concurrency leases to end (key set, message id), sent with the XACKs.
        self._releases: collections.deque[tuple[Name, str]] = collections.deque()
        #: Keys to pass to ``on_flushed`` once what was queued before them is written
        #: (flowd.flow.keygate: keys whose lease an XACK or release ends, jobs wait for).
        self._wakes: collections.deque[Name] = collections.deque()
        self._waking: list[Name] = []  # taken with the ids being flushed
        self.on_flushed: Callable[[list[Name]], None] | None = None
        #: Flushes written so far: what was queued before flush n started is written
        #: once this is n + 1 (a key gate reads it to know a success's XACK is written).
        self.flushes = 0
        #: The per-key leases whose releases it sends (set with ``on_flushed``).
        self.leases: KeyLeases | None = None
        # Held while the thread sleeps on it; add() releases it to wake the thread. A
        # bare lock, not an Event: Event.set() runs a Condition in Python on every
        # wake-up, the costliest step of acking tiny jobs.
        self._wake = threading.Lock()
        self._wake.acquire()
        self._sleeping = False
        self._closing = False
        self._deadline: float | None = None
        self._session = Session(client, stream)
        self.unwritten = 0
        self.thread = threading.Thread(name=f"flowd-acker-{stream}", target=self._run)

    def start(self) -> None:
        self.thread.start()

    def add(self, msg_id: str, retried: bool = False, record: str | None = None) -> None:
        """Queue one id for XACK; ``retried`` also clears its recorded failure (reason and
        traceback) and its run record (flowd._runs); ``record`` is the job's result
        record (flowd._redis.records), written atomically with the XACK."""
        if retried:
            self._retried.append(msg_id)
        self._ids.append(msg_id if record is None else (msg_id, record))
        # Under load the thread is busy flushing and needs no wake-up.
        if self._sleeping:
            self._sleeping = False
            self._wake_up()

    def release(self, key: Name, msg_id: str) -> None:
        """Queue the end of one per-key concurrency lease (flowd.flow.keylimit)."""
        self._releases.append((key, msg_id))
        if self._sleeping:
            self._sleeping = False
            self._wake_up()

    def notify(self, key: Name) -> None:
        """Pass ``key`` to ``on_flushed`` once everything queued before it is written."""
        self._wakes.append(key)
        if self._sleeping:
            self._sleeping = False
            self._wake_up()

    def close(self, deadline: float | None) -> None:
        """Ask the thread to flush what is queued and exit (retrying until ``deadline``)."""
        self._deadline = deadline
        self._closing = True
        self._wake_up()

    def _wake_up(self) -> None:
        try:
            self._wake.release()
        except RuntimeError:  # released already: the thread is awake or will be
            pass

    def unwritten_ids(self) -> set[str]:
        """Ids added and not yet acked in Redis (queued, or in a flush not yet done)."""
        with self._lock:
            items = [*self._flushing, *self._ids.copy()]
        return {item if isinstance(item, str) else item[0] for item in items}

    def _take_ids(self) -> None:
        """Move the queued ids to the flush list (under the lock: unwritten_ids sees all)."""
        with self._lock:
            self._flushing += self._take(self._ids)
            if self._wakes:  # after the ids: those queued before each key are taken too
                self._waking += self._take(self._wakes)

    def _written(self) -> None:
        with self._lock:
            self._flushing = []
            self.flushes += 1

    def _queued(self) -> bool:
        return bool(self._ids or self._releases or self._wakes)

    def _take(self, queue: collections.deque[T]) -> list[T]:
        out: list[T] = []
        try:
            while True:
                out.append(queue.popleft())
        except IndexError:
            return out

    def _run(self) -> None:
        backoff = Backoff(f"acker for {self.stream}/{self.group}")
        retried: list[str] = []
        releases: list[tuple[Name, str]] = []
        try:
            while True:
                if not self._queued() and not self._closing:
                    self._sleeping = True
                    # Re-check: an add() or close() may have come before the flag. A
                    # wake-up left from earlier only makes one extra round.
                    if not self._queued() and not self._closing:
                        self._wake.acquire()
                    self._sleeping = False
                # Releases first: a job's release is queued before its id.
                releases += self._take(self._releases)
                self._take_ids()
                retried += self._take(self._retried)
                while self._flushing or retried or releases:
                    try:
                        self._flush(self._flushing, retried, releases)
                    except Exception as exc:
                        if self._past_deadline():
                            break
                        delay = backoff.failed(exc)
                        time.sleep(min(delay, self._remaining()))
                        continue
                    backoff.succeeded()
                    self._written()
                    retried.clear()
                    releases = []
                    self._flushed()
                    releases += self._take(self._releases)
                    self._take_ids()
                    retried += self._take(self._retried)
                self._flushed()  # keys taken with nothing to write: written before
                if self._closing and (not self._ids or self._past_deadline()):
                    break
        finally:
            self._take_ids()
            ids = self._flushing
            self.unwritten = len(ids)
            if ids:
                logger.warning(
                    "%d acks for %s/%s could not be written; those messages stay "
                    "pending and will be delivered again",
                    len(ids),
                    self.stream,
                    self.group,
                )
            self._session.close()

    def _flushed(self) -> None:
        """What was taken is written: pass on the keys taken with it."""
        if not self._waking:
            return
        with self._lock:
            keys, self._waking = self._waking, []
        if self.on_flushed is None:
            return
        try:
            self.on_flushed(keys)
        except Exception:  # waiters are asked again on their timer anyway
            logger.exception("acker: waking the jobs waiting for a key failed")

    def _remaining(self) -> float:
        if self._deadline is None:
            return float("inf")
        return max(0.0, self._deadline - time.monotonic())

    def _past_deadline(self) -> bool:
        return self._closing and self._deadline is not None and time.monotonic() >= self._deadline

    def _split(self, ids: list[Queued]) -> tuple[list[str], list[list[tuple[str, str]]]]:
        """The ids to ack plainly, and the (id, record) chunks of the script calls that
        ack the others with their records in one atomic step: never acked without its
        result, nor stored as succeeded without its ack (so a recorded id is in no
        plain XACK)."""
        plain: list[str] = []
        recorded: list[tuple[str, str]] = []
        for item in ids:
            if isinstance(item, str):
                plain.append(item)
            else:
                recorded.append(item)
        chunks = [
            recorded[i : i + RECORDS_PER_CALL] for i in range(0, len(recorded), RECORDS_PER_CALL)
        ]
        return plain, chunks

    def _flush(
        self, ids: list[Queued], retried: list[str], releases: Sequence[tuple[Name, str]] = ()
    ) -> None:
        plain, chunks = self._split(ids)
        commands: list[tuple[Any, ...] | bytes] = [
            ("XACK", self.stream, self.group, *plain[i : i + ACK_CHUNK])
            for i in range(0, len(plain), ACK_CHUNK)
        ]
        first_call = len(commands)
        assert not chunks or self.result_ttl_ms is not None
        ttl_ms = self.result_ttl_ms or 0
        commands += [packed_ack_call(self.stream, self.group, ttl_ms, c) for c in chunks]
        if releases and self.leases is not None:
            commands += self.leases.release_commands(releases)
        if retried:
            commands.append(("HDEL", self.errors_key, *retried))
            commands.append(("HDEL", self.tracebacks_key, *retried))
            commands.append(("HDEL", self.runs_key, *retried))
        # The dashboard's per-minute history rides on the same round trip, and the
        # minute is Redis's: the first flush of a process asks its clock first.
        if not _throughput.CLOCK.known:
            _throughput.CLOCK.learn(self._session.call("TIME"))
        stats = _throughput.processed_commands(self.stream, len(ids))
        replies = self._session.call_many([*commands, *stats])
        _throughput.check_replies(replies[len(commands) :], self.stream)
        own = replies[: len(commands)]
        unknown = [i for i, reply in enumerate(own) if is_noscript(reply)]
        if unknown:  # a restarted server, a failover: send those calls again as EVAL
            again = self._session.call_many(
                [self._as_eval(commands[i], chunks, first_call, i) for i in unknown]
            )
            for index, reply in zip(unknown, again, strict=True):
                own[index] = reply
        for reply in own:
            if isinstance(reply, Exception):
                if "NOGROUP" in str(reply):
                    # The group is gone with its pending entries: nothing is left to ack.
                    logger.warning(
                        "acker: group %s on %s is gone; dropping %d acks",
                        self.group,
                        self.stream,
                        len(ids),
                    )
                    continue
                raise reply
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("acked %d messages on %s/%s", len(ids), self.stream, self.group)

    def _as_eval(
        self,
        command: tuple[Any, ...] | bytes,
        chunks: list[list[tuple[str, str]]],
        first_call: int,
        index: int,
    ) -> tuple[Any, ...]:
        """Command ``index`` of a flush as EVAL; a records call, framed as bytes, is
        built again from its chunk."""
        if isinstance(command, bytes):
            chunk = chunks[index - first_call]
            command = ack_call(self.stream, self.group, self.result_ttl_ms or 0, chunk)
        return as_eval(command)


#: The scripts a flush sends, by sha.
_SCRIPTS = {script.sha: script.source for script in (ACK_WITH_RECORDS, RELEASE, RELEASE_ONE)}


def as_eval(command: tuple[Any, ...]) -> tuple[Any, ...]:
    """An EVALSHA of a flush (records' acks, key releases) as EVAL (which also caches
    the script)."""
    return ("EVAL", _SCRIPTS[command[1]], *command[2:])
