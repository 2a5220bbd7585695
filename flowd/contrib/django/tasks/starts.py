"""Start records of first attempts, written in pipelined batches.

A task's first attempt needs nothing back from Redis to start (it has no earlier
attempts to read), so its start record need not cost its worker thread a round
trip of its own: worker threads add their records here, and whichever finds no
write under way writes every record waiting, in one pipeline, until none is left.
Under load one write carries the records of many tasks; a lone task writes its
own, as before. A retry still reads its earlier attempts at once (records.start).
"""

from __future__ import annotations

import threading
from typing import Any

from . import records

__all__ = ["StartBatch"]


class StartBatch:
    """The start records waiting to be written, and the one writer of them."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._waiting: list[records.StartCall] = []
        self._writing = False

    def add(self, call: records.StartCall) -> None:
        """Queue one record; write the waiting ones if no other thread is writing.

        :raises redis.exceptions.RedisError: the write failed; its records wait for the
            next write (the caller's attempt fails, as a failed start does).
        """
        with self._lock:
            self._waiting.append(call)
            if self._writing:
                return  # the writer loops until nothing waits: this one goes too
            self._writing = True
        self._write()

    def flush(self) -> None:
        """Write every waiting record now (before a retry reads them, or an error
        record follows its start), unless another thread is writing them already:
        then they are on their way, and this returns without waiting."""
        with self._lock:
            if self._writing or not self._waiting:
                return  # empty, or a writer is at it and takes what waits
            self._writing = True
        self._write()

    def _write(self) -> None:
        while True:
            with self._lock:
                calls, self._waiting = self._waiting, []
                if not calls:
                    self._writing = False
                    return
            try:
                records.write_starts(self._client, calls)
            except BaseException:
                with self._lock:
                    self._waiting[:0] = calls  # kept, in order, for the next write
                    self._writing = False
                raise
