"""This consumer's side of per-key concurrency on one stream (the Redis side is
:mod:`flowd.flow.keylimit`): which message holds which key's lease, and the entries
parked because their key was busy.

A parked entry holds no permit and no worker thread: it waits here, pending under
this consumer with its message lease kept fresh by the lease loop (so no claimer
takes it, and its delivery count does not grow), until :class:`KeyRetryLoop` gets its
lease: at once when a lease of its key held here ends (the acker wrote the job's
XACK or release), else on a short timer (another consumer's jobs). Per key, this
consumer starts its entries in the order it read them (across consumers, no order).
The lot is bounded; past :data:`PARK_CAP` the caller hands entries back to the group
(claimable at once by any consumer, their delivery count unchanged).

Items are opaque here (the consumer's work items); the gate only keeps them.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.exceptions

from .._redis.session import Session
from .._redis.thread_sessions import ThreadSessions
from .keylimit import PAIRS_PER_CALL, AcquireCall, KeyLeases, Name

__all__ = ["PARK_CAP", "RETRY_POLL", "Asking", "KeyGate", "KeyRetryLoop"]

logger = logging.getLogger(__name__)

#: Most entries parked per stream; more are handed back to the group.
PARK_CAP = 1024
#: How often parked keys are asked again without a local release (another consumer's).
RETRY_POLL = 0.1
#: How long the retry loop sleeps with nothing parked before it looks at its stop event.
_IDLE_WAIT = 0.25
#: Most keys asked again in one retry (the rest in the next ones, round robin).
_KEYS_PER_RETRY = 500

#: Most keys remembered with the last message that held them here and was acked.
_ACKED_KEPT = 4096

#: The flush count of an acked job whose XACK the acker said is written.
_WRITTEN = -(2**62)

#: One entry asking for a lease: (work item, message id, its key's set).
Ask = tuple[Any, str, Name]


@dataclass(slots=True)
class Asking:
    """Entries whose leases are asked for (:meth:`KeyGate.begin`): those to ask, with
    their script call, and those that park behind entries of their key parked here."""

    items: list[Any]
    ids: list[str]
    names: list[Name]
    behind: list[Ask]
    call: AcquireCall | None


class KeyGate:
    """The leases this consumer holds on one stream, and its parked entries.

    Thread-safe: the reader, the claimer, the retry loop, the lease loop and the
    worker threads call it. Its Redis calls use a session per calling thread.

    :param release: ends one lease (its key's set, message id) soon: the acker
        sends it with its next batch of XACKs. A success needs none (its XACK
        ends its lease).
    :param notify: passes a key to :meth:`flushed` once the acker wrote what was
        queued before it.
    :param flushes: how many flushes the acker has written (what was queued before
        flush n started is written once it says n + 1).
    """

    def __init__(
        self,
        leases: KeyLeases,
        client: Any,
        stream: str,
        release: Callable[[Name, str], None],
        notify: Callable[[Name], None],
        capacity: int = PARK_CAP,
        flushes: Callable[[], int] | None = None,
    ) -> None:
        self.leases = leases
        self.stream = stream
        self.capacity = capacity
        self.release = release
        self.notify = notify
        self._sessions = ThreadSessions(client, stream)
        self._lock = threading.Lock()
        #: message id -> the set of the key whose lease it holds.
        self._held: dict[str, Name] = {}
        #: key set -> (the last message that held it here and succeeded, the acker's
        #: flush count then): once its XACK is written its lease is over, and the next
        #: acquire of the key can say so instead of Redis asking XPENDING.
        self._acked: dict[Name, tuple[str, int]] = {}
        self._flushes = flushes
        #: key set -> its parked (item, message id), oldest first.
        self._parked: dict[Name, collections.deque[tuple[Any, str]]] = {}
        self._count = 0
        #: Parked keys whose lease here ended and was written: asked again first.
        self._woken: set[Name] = set()
        self._wake = threading.Event()

    def session(self) -> Session:
        """The calling thread's session on the stream."""
        return self._sessions.get()

    def close(self) -> None:
        self._sessions.close()

    @property
    def parked(self) -> int:
        """Entries parked now."""
        return self._count

    # -- leases

    def admit(
        self, items: list[Any], ids: list[str], names: list[Name]
    ) -> tuple[list[Any], list[Any]]:
        """Lease the key (``names``) of each entry (``items``, ``ids``), in one script
        call for all: returns (the items that got their lease, to start; the items to
        hand back, the lot being full). The others are parked. An entry whose key has
        entries parked here parks behind them."""
        asking = self.begin(items, ids, names, framed=False)
        return self._settle(asking, self._acquire(asking.ids, asking.names))

    def begin(
        self, items: list[Any], ids: list[str], names: list[Name], *, framed: bool = True
    ) -> Asking:
        """:meth:`admit` in two steps, for a caller that sends the script call in a
        pipeline of its own: the entries and their call (``Asking.call``, None when
        none is needed or it takes more than one); :meth:`end` with its reply."""
        behind: list[Ask] = []
        if self._parked:
            with self._lock:
                parked = self._parked
                if any(k in parked for k in names):
                    asks = list(zip(items, ids, names, strict=True))
                    behind = [a for a in asks if a[2] in parked]
                    asks = [a for a in asks if a[2] not in parked]
                    items, ids, names = (
                        [a[0] for a in asks],
                        [a[1] for a in asks],
                        [a[2] for a in asks],
                    )
        call = None
        if framed and ids and len(ids) <= PAIRS_PER_CALL:
            call = self.leases.acquire_call(names, ids, self._acked_hints(names))
        return Asking(items, ids, names, behind, call)

    def end(self, asking: Asking, reply: Any) -> tuple[list[Any], list[Any]]:
        """:meth:`admit`'s result for entries begun with :meth:`begin`, from the reply to
        their call (an exception if the pipeline failed: then they all park, and the
        retry loop asks again)."""
        call = asking.call
        if call is None:
            busy = self._acquire(asking.ids, asking.names)
        elif isinstance(reply, Exception) and not isinstance(reply, redis.exceptions.ResponseError):
            busy = self._failed(asking.ids, reply)
        else:
            try:
                busy = set(self.leases.busy_of(self.session(), call, reply))
            except Exception as exc:
                busy = self._failed(asking.ids, exc)
        return self._settle(asking, busy)

    def _settle(self, asking: Asking, busy: set[int]) -> tuple[list[Any], list[Any]]:
        """Hold the leases granted, park the entries whose key is busy (or that wait
        behind parked ones): (granted items, items that found the lot full)."""
        items, ids, names, behind = asking.items, asking.ids, asking.names, asking.behind
        if not busy and not behind:  # the common case: every key was free
            self._held.update(zip(ids, names, strict=True))
            return items, []
        granted: list[Any] = []
        overflow: list[Any] = []
        held = self._held
        with self._lock:
            waiting = behind
            for index, ask in enumerate(zip(items, ids, names, strict=True)):
                if index in busy:
                    waiting.append(ask)
                else:
                    held[ask[1]] = ask[2]
                    granted.append(ask[0])
            for item, msg_id, k in waiting:
                if self._count >= self.capacity:
                    overflow.append(item)
                    continue
                self._parked.setdefault(k, collections.deque()).append((item, msg_id))
                self._count += 1
        if waiting:
            self._wake.set()  # the retry loop starts its timer
        return granted, overflow

    def _acquire(self, ids: list[str], names: list[Name]) -> set[int]:
        """The script's busy positions; on a failed call every entry counts as busy (it
        parks, and the retry loop asks again)."""
        if not ids:
            return set()
        try:
            return self.leases.acquire(self.session(), names, ids, self._acked_hints(names))
        except Exception as exc:
            return self._failed(ids, exc)

    def _failed(self, ids: list[str], exc: BaseException) -> set[int]:
        logger.warning(
            "could not lease the concurrency keys of %d messages on %s (%s); they wait "
            "and are tried again",
            len(ids),
            self.stream,
            exc,
        )
        return set(range(len(ids)))

    def _acked_hints(self, names: list[Name]) -> list[str] | None:
        """Per key, the id of the last message that held it here and whose XACK is
        written ("" if none): see KeyLeases.acquire."""
        acked, flushes = self._acked, self._flushes
        if not acked or flushes is None:
            return None
        # Queued before flush n started (n = count then + 1): written once count > n.
        written = flushes() - 2
        hints = []
        for k in names:
            last = acked.get(k)
            hints.append(last[0] if last is not None and last[1] <= written else "")
        return hints

    def finished(self, msg_id: str) -> None:
        """The job of ``msg_id`` succeeded, its XACK queued: that ends its lease."""
        k = self._held.pop(msg_id, None)
        if k is None:
            return
        if self._flushes is not None:
            acked = self._acked
            if len(acked) >= _ACKED_KEPT:
                acked.clear()  # bounded; a key forgotten is asked with XPENDING again
            acked[k] = (msg_id, self._flushes())
        if k in self._parked:
            self.notify(k)

    def let_go(self, msg_id: str) -> None:
        """The job of ``msg_id`` failed (its message stays pending), or will not start
        here: end its lease."""
        k = self._held.pop(msg_id, None)
        if k is not None:
            self.release(k, msg_id)
            if k in self._parked:
                self.notify(k)

    def flushed(self, keys: list[Name]) -> None:
        """The acker wrote what was queued before these keys (their jobs' XACKs or
        releases): retry the entries parked on them now."""
        acked = self._acked
        for k in keys:  # the acked job that held it is written now, whatever the count
            last = acked.get(k)
            if last is not None:
                acked[k] = (last[0], _WRITTEN)
        with self._lock:
            parked = self._parked
            hit = [k for k in keys if k in parked]
            self._woken.update(hit)
        if hit:
            self._wake.set()

    def held_pairs(self) -> list[tuple[Name, str]]:
        """(key set, message id) of every lease held (the lease loop extends them)."""
        return [(k, msg_id) for msg_id, k in list(self._held.items())]

    def renew(self, session: Session) -> int:
        """Extend every lease held by one lease time; returns how many."""
        pairs = self.held_pairs()
        if pairs:
            self.leases.renew(session, pairs)
        return len(pairs)

    # -- parked entries

    def parked_ids(self) -> list[str]:
        """Message ids of the parked entries (leased like read-ahead ones)."""
        with self._lock:
            return [msg_id for q in self._parked.values() for _, msg_id in q]

    def take_parked(self) -> list[Any]:
        """Take every parked item (a stop hands them back)."""
        with self._lock:
            items = [item for q in self._parked.values() for item, _ in q]
            self._parked.clear()
            self._woken.clear()
            self._count = 0
        return items

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        """Wait up to ``timeout`` for a written end of a parked key's lease (True)."""
        if not self._woken:
            self._wake.wait(timeout if self._count else min(timeout, _IDLE_WAIT))
        self._wake.clear()
        return bool(self._woken) and not stop.is_set()

    def retry(self, *, woken_only: bool) -> list[Any]:
        """Ask again for the oldest parked entries of each key (only keys whose lease
        here ended, if ``woken_only``); returns the items that got their lease, unparked."""
        per_key = self.leases.max_per_key
        with self._lock:
            parked = self._parked
            if woken_only:
                keys = [k for k in self._woken if k in parked]
            else:
                keys = list(itertools.islice(parked, _KEYS_PER_RETRY))
            self._woken.clear()
            asks = [(item, msg_id, k) for k in keys for item, msg_id in _heads(parked[k], per_key)]
        if not asks:
            return []
        # A failed call raises: nothing changed here, the loop backs off and asks again.
        names = [a[2] for a in asks]
        busy = self.leases.acquire(
            self.session(), names, [a[1] for a in asks], self._acked_hints(names)
        )
        granted: list[Any] = []
        lost: list[tuple[Name, str]] = []
        with self._lock:
            for index, (item, msg_id, k) in enumerate(asks):
                if index in busy:
                    continue
                queue = parked.get(k)
                try:
                    if queue is None:
                        raise ValueError
                    queue.remove((item, msg_id))
                except ValueError:  # taken meanwhile (a stop): the lease is not needed
                    lost.append((k, msg_id))
                    continue
                self._count -= 1
                if not queue:
                    del parked[k]
                self._held[msg_id] = k
                granted.append(item)
            for k in keys:  # round robin: keys still waiting go to the back
                queue = parked.pop(k, None)
                if queue:
                    parked[k] = queue
        for k, msg_id in lost:
            self.release(k, msg_id)
        return granted


def _heads(queue: collections.deque[tuple[Any, str]], n: int) -> list[tuple[Any, str]]:
    return list(itertools.islice(queue, n))


class KeyRetryLoop:
    """The step of a stream's ``flowd-keys-<stream>`` thread: start parked entries whose
    key got free.

    :param admit: takes a permit for each of the first items it can (buffers the
        rest, each to start when a permit frees up); returns how many took one.
    :param submit: hands an item that holds its permit to the workers.
    """

    def __init__(
        self,
        gate: KeyGate,
        stop: threading.Event,
        admit: Callable[[list[Any], int], int],
        submit: Callable[[Any], None],
        poll: float = RETRY_POLL,
    ) -> None:
        self.gate = gate
        self.stop = stop
        self.admit = admit
        self.submit = submit
        self.poll = poll
        self._full_at = 0.0

    def step(self) -> bool:
        gate = self.gate
        woken = gate.wait(self.stop, self.poll)
        if self.stop.is_set() or not gate.parked:
            return False
        now = time.monotonic()
        full = now - self._full_at >= self.poll
        if not woken and not full:
            return False
        if full:
            self._full_at = now
        granted = gate.retry(woken_only=not full)
        if granted:
            taken = self.admit(granted, len(granted))
            for item in granted[:taken]:
                self.submit(item)
        return True
