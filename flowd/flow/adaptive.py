"""Adaptive concurrency: how many of a pool's worker threads may run a job at once.

A hill climber in the spirit of .NET's thread pool. It counts completed jobs per
short window and, while the pool is saturated (every active permit held), tries a
neighbouring limit: A/B/A windows (the current limit, the candidate, the current
again, twice over), compared by their medians so that a drift of the machine's
load counts against neither.

- A step down (half the threads) is kept unless throughput falls beyond noise: with
  equal throughput, fewer threads contend less for the GIL and for the client's
  connection pool.
- A step up (twice the threads, at most ``concurrency``) is kept only when
  throughput rises beyond noise.

A kept step is followed at once by the next one in the same direction; a rejected
one doubles the pause before the next probe (up to :data:`MAX_PAUSE`). A shift of
the average job duration (factor 3) or of throughput re-probes at once. It starts at
full concurrency, so jobs that wait on the network or sleep never wait for it to
climb, and it only probes with enough completions per window: slow or stuck jobs
(a handful per second) leave the limit where it is, and it never goes below 1.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ConfigurationError
from . import limits

__all__ = [
    "MAX_CONCURRENCY",
    "AdaptiveLoop",
    "Climber",
    "LimitReporter",
    "Limited",
    "Reporter",
    "Sample",
    "check_concurrency",
]

logger = logging.getLogger("flowd.adaptive")

# Each unit of concurrency is a worker thread: past this, a typo, not a plan.
MAX_CONCURRENCY = 4096

#: Seconds a stop waits for the thread, which may be in a report to Redis.
STOP_WAIT = 0.2
#: Seconds between two looks at the pool.
TICK = 0.025
#: Shortest window, seconds; and the completions a window needs to count.
WINDOW = 0.2
MIN_COMPLETIONS = 30
#: A window still short of completions by then is too thin to compare: the probe ends.
MAX_WINDOW = 2.0
#: How busy the pool must be over a window, on average, to count as saturated: a look
#: counts (running + buffered jobs) / active limit, at most 1.
SATURATED = 0.5
#: A step down is kept while its median is at least (1 - TIE) of the current's; a step
#: up needs (1 + GAIN). A first candidate window below (1 - CLEAR_LOSS) ends the probe.
TIE = 0.03
GAIN = 0.05
CLEAR_LOSS = 0.3
#: Pause before the first probe, and the longest pause between probes (seconds).
FIRST_PAUSE = 0.5
MAX_PAUSE = 30.0
#: Job durations or throughput moving by this factor since the last decision re-probe.
SHIFT = 3.0
#: A/B/A...: the windows of one probe ("A" the current limit, "B" the candidate).
PATTERN = "ABABA"


def check_concurrency(concurrency: object, adaptive: object) -> tuple[int, bool]:
    """Queue's ``concurrency`` and ``adaptive_concurrency``, checked."""
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= MAX_CONCURRENCY
    ):
        raise ConfigurationError(
            f"concurrency must be an int from 1 to {MAX_CONCURRENCY}, not {concurrency!r}: "
            "each unit is a worker thread"
        )
    if not isinstance(adaptive, bool):
        raise ConfigurationError(f"adaptive_concurrency must be True or False, not {adaptive!r}")
    return concurrency, adaptive


class Limited(Protocol):
    """What the loop steers: the pool's permits (flowd._consumer.permits.Permits)."""

    @property
    def size(self) -> int: ...

    @property
    def limit(self) -> int: ...

    @property
    def in_use(self) -> int: ...

    @property
    def buffered(self) -> int: ...


class Reporter(Protocol):
    """Where the active limit is published (flowd info and the dashboard read it)."""

    def publish(self, active: int, maximum: int) -> None: ...


class LimitReporter:
    """Publishes a consumer's active limit in Redis (:mod:`flowd.flow.limits`), where
    ``flowd info`` and the dashboard read it; the first report also prunes entries
    that consumers killed without a clean stop left behind."""

    def __init__(self, client: Any, stream: str, group: str, consumer: str) -> None:
        self._where = (client, stream, group, consumer)
        self._pruned = False

    def publish(self, active: int, maximum: int) -> None:
        now_ms = int(time.time() * 1000)  # wall clock: readers compare it with theirs
        if not self._pruned:
            limits.prune(self._where[0], self._where[1], now_ms)
            self._pruned = True
        limits.publish(*self._where, active, maximum, now_ms)


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the pool: when (monotonic), jobs completed so far, how busy it is
    (0 to 1, see :data:`SATURATED`), and the moving average of job durations (s)."""

    at: float
    completed: int
    busy: float
    job_seconds: float


@dataclass(slots=True)
class _Window:
    start: float
    completed: int
    looks: int = 0
    busy: float = 0.0


@dataclass(slots=True)
class _Probe:
    current: int
    candidate: int
    rates: dict[str, list[float]] = field(default_factory=lambda: {"A": [], "B": []})
    step: int = 0  # index into PATTERN

    @property
    def arm(self) -> str:
        return PATTERN[self.step]

    @property
    def down(self) -> bool:
        return self.candidate < self.current


class Climber:
    """The decisions, fed one :class:`Sample` at a time (no clock or thread of its own).

    :meth:`feed` returns the limit to set now, or None to keep the current one.
    """

    def __init__(self, size: int, start: float) -> None:
        self.size = size
        self.limit = size
        self._window: _Window | None = None
        self._probe: _Probe | None = None
        self._pause = FIRST_PAUSE
        self._next_probe = start + FIRST_PAUSE
        self._down_next = True
        self._settle_until = start
        self._seen_seconds: float | None = None  # job duration at the last decision
        self._seen_rate: float | None = None  # throughput at the last decision
        #: Probes so far, and those whose candidate was kept (for tests and logs).
        self.probes = 0
        self.kept = 0

    def feed(self, sample: Sample) -> int | None:
        """Take one look; return a new limit to apply, or None."""
        if sample.at < self._settle_until:
            return None  # the last change is still taking effect
        window = self._window
        if window is None:
            self._window = _Window(sample.at, sample.completed)
            return None
        window.looks += 1
        window.busy += sample.busy
        elapsed = sample.at - window.start
        done = sample.completed - window.completed
        if elapsed < WINDOW or (done < MIN_COMPLETIONS and elapsed < MAX_WINDOW):
            return None
        self._window = _Window(sample.at, sample.completed)
        usable = done >= MIN_COMPLETIONS and window.busy >= SATURATED * window.looks
        rate = done / elapsed
        if self._probe is not None:
            return self._probe_window(sample, rate if usable else None)
        if not usable:
            return None
        self._watch_shift(sample, rate)
        if sample.at >= self._next_probe:
            return self._start_probe(sample)
        return None

    def _watch_shift(self, sample: Sample, rate: float) -> None:
        seconds, seen = sample.job_seconds, self._seen_seconds
        if seen is None or self._seen_rate is None:
            self._seen_seconds, self._seen_rate = seconds, rate
            return
        shifted = _moved(seconds, seen) or _moved(rate, self._seen_rate)
        if shifted and self._next_probe > sample.at:
            logger.debug("adaptive: jobs changed (%.4fs, %.0f/s): probing again", seconds, rate)
            self._pause = FIRST_PAUSE
            self._next_probe = sample.at
            self._down_next = self.limit > 1

    def _start_probe(self, sample: Sample) -> int | None:
        down = self._down_next if 1 < self.limit < self.size else self.limit > 1
        if self.size == 1:
            return None
        candidate = max(1, self.limit // 2) if down else min(self.size, self.limit * 2)
        self._probe = _Probe(self.limit, candidate)
        self.probes += 1
        return None  # the first window is the current limit's ("A")

    def _probe_window(self, sample: Sample, rate: float | None) -> int | None:
        probe = self._probe
        assert probe is not None
        if rate is None:  # the queue ran dry or jobs slowed: no verdict
            return self._end_probe(sample, keep=False, why="not saturated")
        probe.rates[probe.arm].append(rate)
        a, b = probe.rates["A"], probe.rates["B"]
        if probe.arm == "B" and len(b) == 1 and rate < a[0] * (1 - CLEAR_LOSS):
            return self._end_probe(sample, keep=False, why="clear loss")
        probe.step += 1
        if probe.step < len(PATTERN):
            return self._switch(sample, probe.candidate if probe.arm == "B" else probe.current)
        base, tried = statistics.median(a), statistics.median(b)
        bound = base * (1 - TIE) if probe.down else base * (1 + GAIN)
        return self._end_probe(
            sample, keep=tried >= bound, why=f"{tried:.0f}/s vs {base:.0f}/s", rate=tried
        )

    def _switch(self, sample: Sample, limit: int) -> int | None:
        if limit == self.limit:
            return None
        self.limit = limit
        # Jobs started under the old limit end within about one job duration.
        self._settle_until = sample.at + min(MAX_WINDOW, 2 * sample.job_seconds)
        self._window = None
        return limit

    def _end_probe(
        self, sample: Sample, *, keep: bool, why: str, rate: float | None = None
    ) -> int | None:
        probe = self._probe
        assert probe is not None
        self._probe = None
        target = probe.candidate if keep else probe.current
        self._seen_seconds = sample.job_seconds
        if keep:
            self.kept += 1
            self._seen_rate = rate
            self._pause = FIRST_PAUSE
            self._next_probe = sample.at  # go on in the same direction
            self._down_next = probe.down
            bound = 1 if probe.down else self.size
            if target == bound:
                self._down_next = not probe.down
                self._next_probe = sample.at + self._pause
        else:
            self._pause = min(MAX_PAUSE, self._pause * 2)
            self._next_probe = sample.at + self._pause
            self._down_next = not probe.down
        logger.debug(
            "adaptive: %s %d -> %d (%s): limit %d",
            "kept" if keep else "rejected",
            probe.current,
            probe.candidate,
            why,
            target,
        )
        return self._switch(sample, target)


def _moved(now: float, before: float) -> bool:
    if now <= 0 or before <= 0:
        return now != before
    return now / before >= SHIFT or before / now >= SHIFT


class AdaptiveLoop:
    """The ``flowd-adaptive-<name>`` thread: looks at the pool every :data:`TICK`
    and applies the :class:`Climber`'s limits through ``apply``.

    :param completed: jobs completed so far (any outcome).
    :param job_seconds: the moving average of job durations.
    :param apply: sets the active limit (permits and read-ahead).
    :param reporter: told the (active limit, concurrency) on each change and every
        :data:`REPORT_EVERY` seconds; its errors are logged. Nothing is withdrawn on
        stop (Redis may be down then): the entry goes stale (limits.STALE_AFTER).
    """

    REPORT_EVERY = 5.0

    def __init__(
        self,
        name: str,
        permits: Limited,
        completed: Callable[[], int],
        job_seconds: Callable[[], float],
        apply: Callable[[int], None],
        reporter: Reporter | None = None,
    ) -> None:
        self.permits = permits
        self._completed = completed
        self._job_seconds = job_seconds
        self._apply = apply
        self._reporter = reporter
        self._stop = threading.Event()
        self.climber = Climber(permits.size, time.monotonic())
        self._thread = threading.Thread(
            target=self._run, name=f"flowd-adaptive-{name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread (a look takes microseconds; a report in flight is not waited for
        beyond STOP_WAIT: a stop keeps its deadline while Redis does not answer)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(STOP_WAIT)

    def _run(self) -> None:
        reported = -self.REPORT_EVERY
        permits, climber, monotonic = self.permits, self.climber, time.monotonic
        while not self._stop.wait(TICK):
            try:
                now = monotonic()
                limit = climber.feed(
                    Sample(
                        now,
                        self._completed(),
                        min(1.0, (permits.in_use + permits.buffered) / permits.limit),
                        self._job_seconds(),
                    )
                )
                if limit is not None:
                    self._apply(limit)
                if self._reporter is not None and (
                    limit is not None or now - reported >= self.REPORT_EVERY
                ):
                    reported = now
                    self._send_report()
            except Exception:  # the pool runs on at its last limit; this thread lives on
                logger.exception("adaptive concurrency: a look at the pool failed")

    def _send_report(self) -> None:
        assert self._reporter is not None
        try:
            self._reporter.publish(self.permits.limit, self.permits.size)
        except Exception as exc:  # Redis away: the next report says it again
            logger.debug("adaptive concurrency: could not publish the limit: %s", exc)
