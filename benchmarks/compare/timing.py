"""Clocks and limits shared by every scenario."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL = 0.005  # seconds between completion checks of a subprocess run
RUN_TIMEOUT = 900.0  # a run that takes longer than this is a failure


def timed_rate(n: int, run: Callable[[], object]) -> tuple[float, float]:
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    return n / elapsed, elapsed
