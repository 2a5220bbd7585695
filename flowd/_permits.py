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
        self._needs: list[int] = []  # what each current waiter waits for
        self._wakes = 0  # wake() calls so far: ends the waits of wait_free()

    @property
    def in_use(self) -> int:
        return self.size - self._free

    def _wait(self, need: int, timeout: float | None, *, wakeable: bool = False) -> bool:
        """Wait (lock held) until ``need`` permits are free (or, if ``wakeable``, until
        wake()); False on timeout."""
        need = min(need, self.size)
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
            return self._free

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
        """End every wait_free() now (a stop: the reader looks at its stop signal);
        acquire() goes on waiting, so messages already read can still start."""
        with self._cond:
            self._wakes += 1
            self._cond.notify_all()
