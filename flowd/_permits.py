"""Permits: the concurrency bound shared by the reader and the claimer."""

from __future__ import annotations

import threading


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
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._needs: list[int] = []  # what each current waiter waits for

    @property
    def free(self) -> int:
        return self._free

    @property
    def in_use(self) -> int:
        return self.size - self._free

    def _wait(self, need: int, timeout: float | None) -> bool:
        """Wait (lock held) until ``need`` permits are free or closed; False on timeout."""
        need = min(need, self.size)
        if self._free >= need or self._closed:
            return True
        self._needs.append(need)
        try:
            return self._cond.wait_for(lambda: self._free >= need or self._closed, timeout)
        finally:
            self._needs.remove(need)

    def wait_free(self, timeout: float | None = None) -> int:
        """Wait until a permit is free; return how many are free (0 on timeout or close)."""
        with self._cond:
            self._wait(1, timeout)
            return 0 if self._closed else self._free

    def acquire(self, timeout: float | None = None) -> bool:
        """Take one permit; False on timeout or once closed."""
        with self._cond:
            self._wait(1, timeout)
            if self._closed or self._free <= 0:
                return False
            self._free -= 1
            return True

    def try_acquire(self, n: int) -> int:
        """Take up to ``n`` permits without waiting; returns how many were taken."""
        with self._cond:
            if self._closed:
                return 0
            taken = min(n, self._free)
            self._free -= taken
            return taken

    def release(self, n: int = 1) -> None:
        with self._cond:
            free = self._free + n
            if free > self.size:
                raise ValueError("Permits released too many times")
            self._free = free
            if self._needs and free >= min(self._needs):
                self._cond.notify_all()

    def wait_all_free(self, timeout: float | None) -> bool:
        """Wait until no permit is taken (all work finished); False on timeout."""
        with self._cond:
            return self._wait(self.size, timeout) and self._free >= self.size

    def wake(self) -> None:
        """Wake every waiter so it can look at its stop signal."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiter; later acquire() calls fail. Releases still count."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
