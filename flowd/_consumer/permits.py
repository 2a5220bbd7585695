"""Permits: the concurrency bound shared by the reader and the claimer, and the
read-ahead buffer of messages read beyond it."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any


class Permits:
    """A bounded semaphore that can also wait for free permits without taking them.

    The reader asks how many permits are free, reads at most that many
    messages, and only then takes one permit per message it got. Holding no
    permits while it blocks in XREADGROUP leaves them to the claimer (an idle
    reader must not starve claimed work). Releasing more than was taken raises
    ValueError, as ``threading.BoundedSemaphore`` does.

    Waiters say how many free permits they need, and a release wakes them only
    once that many are free: a wake-up is a thread switch, the costliest step
    of handing a short job from the reader to the pool.

    Read-ahead: messages the reader read beyond the free permits wait in a
    buffer under the same lock (:meth:`admit`). A worker thread that finishes
    a job takes the next buffered one and keeps its permit
    (:meth:`next_or_release`); only with the buffer empty does it give the
    permit back. Tiny jobs thus run back to back on the worker threads, with no
    thread switch or permit round per job.

    Active limit (adaptive concurrency): :meth:`set_limit` lowers or raises how
    many of the ``size`` permits may be held at once. Lowered, no permit is
    handed out (nor a buffered item started on one kept) until fewer than the
    new limit are held; the jobs running meanwhile finish as they are.
    """

    def __init__(self, size: int, start: Callable[[Any], None] | None = None) -> None:
        self.size = size
        #: Hands a buffered item, with the permit it now holds, to the workers.
        self.start = start
        self._limit = size
        self._free = size  # free under the active limit: below 0 while over it
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._needs: list[int] = []  # what each current waiter waits for
        self._wakes = 0  # wake() calls so far: ends the waits of wait_free()
        self._buffer: collections.deque[Any] = collections.deque()
        self._refill_at = -1  # wake the waiting reader once the buffer is this short
        #: Buffered items started so far: the reader sees whether the buffer moves.
        self.started = 0

    @property
    def in_use(self) -> int:
        return self._limit - self._free

    @property
    def limit(self) -> int:
        """How many permits may be held at once now (1 to ``size``)."""
        return self._limit

    def set_limit(self, limit: int) -> None:
        """Let at most ``limit`` permits be held at once (1 <= limit <= size)."""
        if not 1 <= limit <= self.size:
            raise ValueError(f"limit must be between 1 and {self.size}, not {limit}")
        with self._cond:
            self._free += limit - self._limit
            self._limit = limit
            self._cond.notify_all()  # rare: every waiter looks at the new limit
        if self._buffer and self._free > 0:
            self.start_spare()  # raised: buffered items need not wait for a release

    def _wait(self, need: int, timeout: float | None, *, wakeable: bool = False) -> bool:
        """Wait (lock held) until ``need`` permits are free (or, if ``wakeable``, until
        wake()); False on timeout."""
        need = min(need, self._limit)
        if self._free >= need:
            return True
        wakes = self._wakes
        self._needs.append(need)
        try:
            return self._cond.wait_for(
                lambda: self._free >= need or (wakeable and self._wakes != wakes), timeout
            )
        finally:
            self._needs.remove(need)

    def wait_free(self, timeout: float | None = None) -> int:
        """Wait until a permit is free, or wake(); return how many are free (maybe 0)."""
        with self._cond:
            self._wait(1, timeout, wakeable=True)
            return max(0, self._free)

    @property
    def buffered(self) -> int:
        """Messages read ahead, waiting for a worker."""
        return len(self._buffer)

    def wait_room(self, timeout: float | None, refill_at: int) -> tuple[int, int]:
        """Wait until a permit is spare (free, and not needed by a buffered item), the
        buffer holds ``refill_at`` items or fewer, or wake(); return (spare permits,
        buffered items)."""
        with self._cond:
            buffer = self._buffer
            if self._free - len(buffer) < 1 and len(buffer) > refill_at:
                wakes = self._wakes
                self._needs.append(1)
                self._refill_at = refill_at
                try:
                    self._cond.wait_for(
                        lambda: (
                            self._free - len(buffer) >= 1
                            or len(buffer) <= refill_at
                            or self._wakes != wakes
                        ),
                        timeout,
                    )
                finally:
                    self._needs.remove(1)
                    self._refill_at = -1
            return max(0, self._free - len(buffer)), len(buffer)

    def admit(self, items: list[Any], start: int) -> int:
        """Take a permit for each of the first ``start`` items (fewer if fewer are
        free) and buffer the rest; returns how many took one (the caller starts those).

        Starting fewer than the free permits wakes fewer worker threads: the ones
        started go on with the buffer (:meth:`next_or_release`).
        """
        with self._cond:
            taken = max(0, min(len(items), start, self._free))
            self._free -= taken
            if taken < len(items):
                self._buffer.extend(items[taken:])
            return taken

    def start_spare(self) -> int:
        """Start buffered items on the free permits (the workers on it are slow to get
        through it); returns how many started."""
        with self._cond:
            buffer = self._buffer
            started = [buffer.popleft() for _ in range(min(self._free, len(buffer)))]
            self._free -= len(started)
            self.started += len(started)
        if started:
            assert self.start is not None, "items are buffered only with a start callback"
            for item in started:
                self.start(item)
        return len(started)

    def next_or_release(self) -> Any:
        """The next buffered item, keeping the caller's permit; or, with the buffer
        empty, give the permit back and return None."""
        # The lock itself, not the Condition: its C-level ``with`` costs less per job.
        with self._lock:
            buffer = self._buffer
            if buffer and self._free >= 0:  # below 0: over a lowered limit, give it back
                item = buffer.popleft()
                self.started += 1
                if len(buffer) <= self._refill_at:
                    self._cond.notify_all()
                return item
            free = self._free + 1
            if free > self._limit:
                raise ValueError("Permits released too many times")
            self._free = free
            if self._needs and free >= min(self._needs):
                self._cond.notify_all()
            return None

    def take_buffer(self, keep: Callable[[Any], bool] | None = None) -> list[Any]:
        """Take the buffered items (those ``keep`` selects, if given) and return them."""
        with self._cond:
            if keep is None:
                items = list(self._buffer)
                self._buffer.clear()
                return items
            items = [item for item in self._buffer if keep(item)]
            if items:
                rest = [item for item in self._buffer if not keep(item)]
                self._buffer.clear()
                self._buffer.extend(rest)
            return items

    def buffered_items(self) -> list[Any]:
        """A snapshot of the buffer (the lease loop renews these messages)."""
        with self._cond:
            return list(self._buffer)

    def acquire(self, timeout: float | None = None) -> bool:
        """Take one permit; False on timeout."""
        with self._cond:
            self._wait(1, timeout)
            if self._free <= 0:
                return False
            self._free -= 1
            return True

    def try_acquire(self, n: int) -> int:
        """Take up to ``n`` permits without waiting; returns how many were taken."""
        with self._cond:
            taken = max(0, min(n, self._free))
            self._free -= taken
            return taken

    def release(self, n: int = 1) -> None:
        """Give ``n`` permits back; while messages wait in the buffer, each permit
        starts one of them instead (the claimer may have held every permit when the
        reader buffered them)."""
        with self._cond:
            if self._limit - self._free < n:
                raise ValueError("Permits released too many times")
            buffer = self._buffer
            # Over a lowered limit, the permits given back start nothing until under it.
            room = min(n, n + self._free) if self._free < 0 else n
            started = [buffer.popleft() for _ in range(max(0, min(room, len(buffer))))]
            self.started += len(started)
            free = self._free + n - len(started)
            self._free = free
            if self._needs and free >= min(self._needs):
                self._cond.notify_all()
        if started:
            assert self.start is not None, "items are buffered only with a start callback"
            for item in started:
                self.start(item)

    def wait_all_free(self, timeout: float | None) -> bool:
        """Wait until no permit is taken (all work finished); False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._free < self._limit:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                need = self._limit  # registered anew: set_limit may change it
                self._needs.append(need)
                try:
                    self._cond.wait(left)
                finally:
                    self._needs.remove(need)
            return True

    def wake(self) -> None:
        """End every wait_free() now (a stop: the reader looks at its stop signal);
        acquire() goes on waiting, so messages already read can still start."""
        with self._cond:
            self._wakes += 1
            self._cond.notify_all()
