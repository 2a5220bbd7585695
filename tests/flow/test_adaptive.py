"""Adaptive concurrency (issue 26): the active limit of the permits, the climber's
decisions, and a real queue settling on its thread count."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis

import flowd
from flowd._consumer.permits import Permits
from flowd.flow import adaptive, limits
from flowd.flow.adaptive import Climber, Sample
from tests.helpers import wait_until

# -- the active limit of Permits


def test_a_lowered_limit_hands_out_no_permit_until_fewer_are_held() -> None:
    # Given 4 permits, all taken
    permits = Permits(4)
    assert permits.try_acquire(4) == 4
    # When the limit drops to 2
    permits.set_limit(2)
    # Then nothing is free until two of the four are back, and in_use says 4
    assert permits.in_use == 4 and permits.try_acquire(1) == 0
    permits.release(2)
    assert permits.try_acquire(1) == 0
    permits.release(1)
    assert permits.try_acquire(5) == 1
    assert permits.in_use == 2 and permits.limit == 2


def test_raising_the_limit_wakes_a_waiter() -> None:
    permits = Permits(4)
    permits.set_limit(1)
    assert permits.acquire(timeout=0)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(permits.acquire(timeout=5)))
    waiter.start()
    time.sleep(0.05)
    assert not got  # held at the limit of 1
    permits.set_limit(2)
    waiter.join(5)
    assert got == [True] and permits.in_use == 2


def test_over_the_limit_a_worker_gives_its_permit_back_instead_of_taking_the_buffer() -> None:
    started: list[str] = []
    permits = Permits(2, started.append)
    assert permits.admit(["a", "b", "c", "d"], 2) == 2  # a, b run; c, d buffered
    permits.set_limit(1)
    # The first to finish is over the limit: it gives its permit back
    assert permits.next_or_release() is None
    # the other goes on with the buffer, one item at a time
    assert permits.next_or_release() == "c"
    assert permits.next_or_release() == "d"
    assert permits.next_or_release() is None
    assert permits.in_use == 0 and started == []


def test_a_release_over_the_limit_starts_only_what_fits() -> None:
    started: list[str] = []
    permits = Permits(3, started.append)
    assert permits.admit(["a", "b", "c", "d", "e"], 3) == 3
    permits.set_limit(1)
    permits.release(2)  # 3 held -> 1: at the limit, nothing starts
    assert started == []
    permits.set_limit(2)
    permits.release(1)  # 1 held -> 0: room for 2 under the limit of 2
    assert started == ["d", "e"] and permits.in_use == 2


def test_wait_all_free_follows_a_lowered_limit() -> None:
    permits = Permits(4)
    permits.try_acquire(3)
    permits.set_limit(2)
    assert not permits.wait_all_free(0.01)
    threading.Timer(0.05, permits.release, (3,)).start()
    assert permits.wait_all_free(5)


@pytest.mark.parametrize("bad", [0, 5, -1])
def test_a_limit_outside_one_to_size_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="limit must be between 1 and 4"):
        Permits(4).set_limit(bad)


# -- the climber, fed a model of throughput by thread count


def _climb(
    size: int,
    rate: Callable[[int], float],
    seconds: float = 30.0,
    busy: float = 1.0,
    noise: float = 0.0,
    job_seconds: float = 0.001,
) -> tuple[Climber, list[int]]:
    """Feed a climber looks every TICK for ``seconds`` of a pool whose completions per
    second at limit L are ``rate(L)`` (times 1 +- ``noise``); its limits over time."""
    rng = random.Random(7)
    now, done = 0.0, 0.0
    climber = Climber(size, now)
    limits = [climber.limit]
    while now < seconds:
        now += adaptive.TICK
        done += rate(climber.limit) * adaptive.TICK * (1 + rng.uniform(-noise, noise))
        new = climber.feed(Sample(now, int(done), busy, job_seconds))
        if new is not None:
            assert 1 <= new <= size
            limits.append(new)
    return climber, limits


def test_jobs_that_wait_on_io_keep_full_concurrency() -> None:
    # Throughput grows with every thread (sleeping jobs): no step down is kept
    climber, limits = _climb(32, lambda n: 50.0 * n, noise=0.05)
    assert climber.limit == 32
    assert climber.probes >= 1 and climber.kept == 0
    # and each probe cost one short window below full concurrency, with long pauses
    assert limits.count(16) <= climber.probes


def test_gil_bound_jobs_settle_on_one_thread() -> None:
    # The same throughput at every count (CPU-bound: the GIL): fewer threads win ties
    climber, _ = _climb(8, lambda n: 1000.0)
    assert climber.limit == 1


def test_a_peak_is_found_and_kept() -> None:
    # Best at 4 threads (e.g. jobs contending for the client's connection pool)
    peak = {1: 400.0, 2: 700.0, 4: 1000.0, 8: 800.0, 16: 600.0, 32: 500.0}
    climber, limits = _climb(32, lambda n: peak[n], noise=0.02, seconds=60)
    assert climber.limit == 4
    assert limits[-1] == 4


def test_slow_jobs_leave_the_limit_alone() -> None:
    # A few completions per second (slow or stuck jobs): no window is worth comparing
    climber, limits = _climb(8, lambda n: 1.0 * n)
    assert limits == [8] and climber.probes == 0


def test_a_queue_that_is_not_busy_is_not_probed() -> None:
    # Jobs arrive slower than the pool runs them: throughput says nothing of the limit
    climber, limits = _climb(8, lambda n: 1000.0, busy=0.2)
    assert limits == [8] and climber.probes == 0


def test_a_change_of_jobs_probes_again_and_climbs_back() -> None:
    # GIL-bound jobs settle low; then jobs that wait on I/O arrive
    phase = {"io": False}

    def rate(n: int) -> float:
        return 40.0 * n if phase["io"] else 1000.0

    climber = Climber(8, 0.0)
    now, done = 0.0, 0.0
    while now < 60:
        now += adaptive.TICK
        phase["io"] = now > 30
        done += rate(climber.limit) * adaptive.TICK
        climber.feed(Sample(now, int(done), 1.0, 0.02 if phase["io"] else 0.001))
        if now == pytest.approx(30, abs=adaptive.TICK):
            assert climber.limit == 1
    assert climber.limit == 8


# -- a real queue


@dataclass
class Step(flowd.Job):
    n: int


def _serial_worker() -> Callable[[flowd.Task[Step]], None]:
    """Jobs that each hold one shared lock for 2 ms: more threads cannot help."""
    lock = threading.Lock()

    def worker(task: flowd.Task[Step]) -> None:
        with lock:
            time.sleep(0.002)

    return worker


def _backlog(client: redis.Redis, stream: str, n: int) -> None:
    flowd.Producer(client, stream).enqueue_bulk([Step(i) for i in range(n)])


def test_jobs_that_cannot_run_in_parallel_settle_low_on_a_real_queue(
    client: redis.Redis, stream: str
) -> None:
    # Given jobs that each hold one shared lock for 2 ms: more threads cannot help
    _backlog(client, stream, 20_000)
    queue = flowd.Queue(
        client, stream=stream, group="g", job=Step, worker=_serial_worker(), concurrency=8
    )
    handle = queue.run()
    try:
        # Then the active limit comes down from 8 while the backlog lasts
        assert handle.stats().active_limit == 8
        wait_until(lambda: handle.stats().active_limit <= 2, timeout=20)
        assert thread_named("flowd-adaptive-")
    finally:
        handle.stop(timeout=10)


def test_sleeping_jobs_keep_every_thread_on_a_real_queue(client: redis.Redis, stream: str) -> None:
    # Given jobs that sleep 5 ms (as if waiting on I/O), with a backlog
    probes: list[int] = []

    def worker(task: flowd.Task[Step]) -> None:
        time.sleep(0.005)

    _backlog(client, stream, 6_000)
    queue = flowd.Queue(client, stream=stream, group="g", job=Step, worker=worker, concurrency=8)
    handle = queue.run()
    try:
        climber = handle._engine.pool.adaptive.climber  # type: ignore[union-attr]
        deadline = time.monotonic() + 20
        while climber.probes < 2 and time.monotonic() < deadline:
            probes.append(handle.stats().active_limit)
            time.sleep(0.05)
        # Then it probed, found every step down a loss, and stays at 8
        assert climber.probes >= 2 and climber.kept == 0
        wait_until(lambda: handle.stats().active_limit == 8, timeout=5)
    finally:
        handle.stop(timeout=10)


def test_adaptive_concurrency_off_keeps_the_limit_and_starts_no_thread(
    client: redis.Redis, stream: str
) -> None:
    _backlog(client, stream, 2_000)
    queue = flowd.Queue(
        client,
        stream=stream,
        group="g",
        job=Step,
        worker=_serial_worker(),
        concurrency=8,
        adaptive_concurrency=False,
    )
    handle = queue.run()
    try:
        time.sleep(1.5)
        assert handle.stats().active_limit == 8
        assert not thread_named("flowd-adaptive-")
    finally:
        handle.stop(timeout=10)


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_adaptive_concurrency_must_be_a_bool(client: redis.Redis, bad: object) -> None:
    with pytest.raises(flowd.ConfigurationError, match="adaptive_concurrency must be True or"):
        flowd.Queue(
            client,
            stream="s",
            group="g",
            job=Step,
            worker=lambda task: None,
            adaptive_concurrency=bad,  # type: ignore[arg-type]
        )


def thread_named(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def test_a_running_queue_publishes_its_active_limit_which_goes_stale_after_stop(
    client: redis.Redis, stream: str
) -> None:
    # Given an adaptive queue that has read a message (so Redis lists its consumer)
    done = threading.Event()
    _backlog(client, stream, 1)
    queue = flowd.Queue(
        client,
        stream=stream,
        group="g",
        job=Step,
        worker=lambda task: done.set(),
        concurrency=8,
        consumer="adaptive-1",
    )
    handle = queue.run()
    try:
        assert done.wait(10)

        def listed() -> tuple[int | None, int | None]:
            (group,) = flowd.stream_info(client, stream).groups
            (consumer,) = group.consumers
            return consumer.active_limit, consumer.concurrency

        # Then flowd info sees its active limit and concurrency
        wait_until(lambda: listed() == (8, 8), timeout=10)
    finally:
        assert handle.stop(timeout=10)
    # and after a stop it is no longer written, so readers drop it once stale
    later = int(time.time() * 1000) + int(limits.STALE_AFTER * 1000) + 1000
    assert limits.active_limits(client, stream, later) == {}
