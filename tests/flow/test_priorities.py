"""Job priorities (``Producer.enqueue(job, priority=...)``) on a real Redis.

Each priority band is a stream of its own (high above 0, the queue's stream at
0, low below 0); a queue's reader takes waiting jobs of higher bands first,
and gives the lowest waiting band one job after every STARVATION_EVERY in a row
from higher ones. The tests check the order across worker processes (also on a
cluster, with partitions), the starvation rule, delayed jobs, drain, results,
dead letters of a band, and that a queue that never uses priorities gets no
band keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

import flowd
from flowd.flow.priorities import STARVATION_EVERY, band_stream, band_streams
from tests.helpers import (
    GROUP,
    Numbered,
    QueueFactory,
    as_str,
    child_env,
    run_flowd,
    terminate,
    wait_until,
)

PRIORITY_WORKER = Path(__file__).with_name("priority_worker.py")
#: Generous bound for anything that should happen "soon" on a loaded 2-core machine.
WAIT = 30.0
#: Numbers of high jobs start here (low ones below).
HIGH = 1000


def starts(client: Any, stream: str) -> list[int]:
    return [int(as_str(n)) for n in client.lrange(f"{stream}:starts", 0, -1)]


# ---------------------------------------------------------------------------
# The setting


@pytest.mark.parametrize("priority", [101, -101, 1.5, "1", True, None, 10**20])
@pytest.mark.parametrize("how", ["enqueue", "enqueue_bulk", "delayed", "unique"])
def test_a_bad_priority_is_refused_at_the_call_naming_it(
    client: redis.Redis, stream: str, priority: Any, how: str
) -> None:
    producer = flowd.Producer(client, stream)
    with pytest.raises(flowd.ConfigurationError, match="priority"):
        if how == "enqueue":
            producer.enqueue(Numbered(1), priority=priority)
        elif how == "enqueue_bulk":
            producer.enqueue_bulk([Numbered(1)], priority=priority)
        elif how == "delayed":
            producer.enqueue(Numbered(1), delay=5, priority=priority)
        else:
            producer.enqueue(Numbered(1), unique_key="k", priority=priority)
    # Nothing was written
    assert not client.keys(f"*{stream}*")


def test_each_priority_goes_to_its_band(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    high, base, low = band_streams(stream)
    assert base == stream
    for priority in (100, 1, 0, -1, -100):
        producer.enqueue(Numbered(priority), priority=priority)
    producer.enqueue_bulk([Numbered(7), Numbered(8)], priority=50)
    producer.enqueue(Numbered(9))
    assert client.xlen(high) == 4
    assert client.xlen(stream) == 2
    assert client.xlen(low) == 2
    assert band_stream(stream, 3) == high and band_stream(stream, -3) == low
    assert high.startswith("{" + stream + "}:")  # the stream's slot


def test_a_queue_that_never_sees_a_priority_creates_no_band_keys(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a queue with a claimer and housekeeping, and jobs without a priority
    flowd.Producer(client, stream).enqueue_bulk(Numbered(n) for n in range(20))
    done = threading.Event()
    seen: list[int] = []

    def work(task: flowd.Task[Numbered]) -> None:
        seen.append(task.job.n)
        if len(seen) == 20:
            done.set()

    handle = make_queue.run(make_queue(work, claimer=flowd.Claimer(), housekeeping=True))
    assert done.wait(WAIT)
    time.sleep(1.0)  # the loops have looked around a few times
    assert handle.stop(5)
    # Then no key of any band exists
    assert not client.keys("{" + stream + "}:band*")
    # And a drain creates none either
    make_queue(claimer=flowd.Claimer()).drain(10)
    assert not client.keys("{" + stream + "}:band*")


# ---------------------------------------------------------------------------
# Order across worker processes, on one Redis and on a cluster


def start_workers(
    url: str, stream: str, partitions: int, count: int
) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, str(PRIORITY_WORKER), url, stream, str(partitions)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env(url, stream),
        )
        for _ in range(count)
    ]


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> str:
    errors = ""
    for proc in procs:
        terminate(proc, 10)
        assert proc.stderr is not None
        errors += proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    return errors


def test_a_high_backlog_runs_before_an_older_low_one_across_processes(
    request: pytest.FixtureRequest, flow_client: Any, stream: str, partitions: int
) -> None:
    # Given a backlog of 200 low jobs, then 20 high ones
    producer = flowd.Producer(flow_client, stream, partitions=partitions)
    producer.enqueue_bulk((Numbered(n) for n in range(200)), priority=-10)
    producer.enqueue_bulk((Numbered(HIGH + n) for n in range(20)), priority=10)
    # When three worker processes (concurrency 2 each) consume the queue
    url = (
        request.getfixturevalue("redis_url")
        if partitions == 1
        else request.getfixturevalue("cluster").url
    )
    procs = start_workers(url, stream, partitions, 3)
    try:
        wait_until(
            lambda: (
                len(starts(flow_client, stream)) >= 220 or any(p.poll() is not None for p in procs)
            ),
            WAIT * 2,
            interval=0.1,
        )
        assert all(p.poll() is None for p in procs), "a worker process exited"
    finally:
        errors = stop_workers(procs)
    order = starts(flow_client, stream)
    assert sorted(order) == sorted([*range(200), *range(HIGH, HIGH + 20)]), errors
    # Then all 20 high jobs start before the 40th low one
    low_seen = 0
    for n in order:
        if n >= HIGH:
            assert low_seen < 40, order[:80]
        else:
            low_seen += 1
    assert "Traceback" not in errors, errors


# ---------------------------------------------------------------------------
# The starvation rule, the idle reader, delayed jobs, drain


def recording(order: list[int], total: int, done: threading.Event) -> Any:
    def work(task: flowd.Task[Numbered]) -> None:
        order.append(task.job.n)
        if len(order) >= total:
            done.set()

    return work


def longest_high_run_while_low_waits(order: list[int]) -> int:
    """The most high jobs started in a row before the last low one started."""
    last_low = max(i for i, n in enumerate(order) if n < HIGH)
    longest = run = 0
    for n in order[:last_low]:
        run = run + 1 if n >= HIGH else 0
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_low_band_gets_one_job_after_every_ten_high_ones(
    client: redis.Redis, stream: str, make_queue: QueueFactory, concurrency: int
) -> None:
    # Given a backlog of 10 low jobs, then 100 high ones
    producer = flowd.Producer(client, stream)
    producer.enqueue_bulk((Numbered(n) for n in range(10)), priority=-1)
    producer.enqueue_bulk((Numbered(HIGH + n) for n in range(100)), priority=1)
    order: list[int] = []
    done = threading.Event()
    # When one consumer runs them
    make_queue.run(make_queue(recording(order, 110, done), concurrency=concurrency))
    assert done.wait(WAIT)
    # Then high jobs go first, but never more than STARVATION_EVERY in a row while a
    # low one waits: the low band gets one job in every STARVATION_EVERY + 1
    assert order[0] >= HIGH
    assert order[: STARVATION_EVERY + 1].count(0) == 1
    if concurrency == 1:
        assert longest_high_run_while_low_waits(order) <= STARVATION_EVERY, str(order)
    else:
        # Several threads start jobs of the same read in no set order, and the pool's
        # in-flight work can overtake its read-ahead buffer: the rule holds in what the
        # reader takes, so the starts show it within that window.
        assert sum(n < HIGH for n in order[:60]) >= 4, str(order)
    # And each band keeps its own enqueue order (on one thread; see above)
    if concurrency == 1:
        assert [n for n in order if n < HIGH] == list(range(10))
        assert [n for n in order if n >= HIGH] == list(range(HIGH, HIGH + 100))


def test_an_idle_reader_starts_a_new_high_job_before_its_block_ends(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given an idle queue whose reads block for 20 s, and bands that exist
    producer = flowd.Producer(client, stream)
    producer.enqueue(Numbered(1), priority=-5)
    order: list[int] = []
    first, second = threading.Event(), threading.Event()

    def work(task: flowd.Task[Numbered]) -> None:
        order.append(task.job.n)
        (second if first.is_set() else first).set()

    make_queue.run(make_queue(work, block=20))
    assert first.wait(WAIT)
    time.sleep(0.5)  # blocked now
    # When a high job is enqueued, then it starts long before the block would end
    producer.enqueue(Numbered(HIGH), priority=5)
    assert second.wait(10)
    assert order == [1, HIGH]


def test_a_delayed_job_lands_in_its_band_when_due(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    producer = flowd.Producer(client, stream)
    job_id = producer.enqueue(Numbered(HIGH), delay=0.5, priority=20)
    streams: list[str] = []
    done = threading.Event()

    def work(task: flowd.Task[Numbered]) -> None:
        streams.append(task.stream)
        done.set()

    make_queue.run(make_queue(work))
    assert done.wait(WAIT)
    assert streams == [band_stream(stream, 20)]
    assert not producer.cancel(job_id)  # moved already


def test_a_delayed_prioritized_job_can_be_cancelled(client: redis.Redis, stream: str) -> None:
    producer = flowd.Producer(client, stream)
    job_id = producer.enqueue(Numbered(1), delay=60, priority=-3)
    assert producer.cancel(job_id)
    assert not producer.cancel(job_id)


def test_drain_runs_higher_bands_first(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    producer = flowd.Producer(client, stream)
    producer.enqueue_bulk((Numbered(n) for n in range(5)), priority=-1)
    producer.enqueue_bulk(Numbered(100 + n) for n in range(5))
    producer.enqueue_bulk((Numbered(HIGH + n) for n in range(5)), priority=1)
    order: list[int] = []

    def work(task: flowd.Task[Numbered]) -> None:
        order.append(task.job.n)

    assert make_queue(work, concurrency=1).drain(WAIT) == 15
    assert order == [*range(HIGH, HIGH + 5), *range(100, 105), *range(5)]


# ---------------------------------------------------------------------------
# One queue: results, retries and dead letters of a band


def test_a_band_jobs_result_and_dead_letter_are_the_queues(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a job of the low band that always fails, on a queue with a claimer
    producer = flowd.Producer(client, stream)
    job_id = producer.enqueue(Numbered(1), priority=-50)
    time.sleep(0.01)  # each band makes its own ids: a later millisecond makes another one
    ok_id = producer.enqueue(Numbered(2), priority=50)
    runs: list[int] = []

    def work(task: flowd.Task[Numbered]) -> None:
        runs.append(task.job.n)
        if task.job.n == 1:
            raise RuntimeError("fails")

    claimer = flowd.Claimer(min_idle_time=0.2, max_retries=1, interval=0.1)
    make_queue.run(make_queue(work, claimer=claimer, result_ttl=60))
    results = flowd.Results(client, stream, group=GROUP)
    # Then it is retried once, then dead-lettered in its band's dead letters
    status = wait_until(
        lambda: (r := results.get(job_id)) is not None and r.status.finished and r.status, WAIT
    )
    assert status is flowd.JobStatus.DEAD
    assert runs.count(1) == 2
    dead = flowd.DeadLetters(client, band_stream(stream, -50)).list()
    assert [d.fields["n"] for d in dead] == ["1"]
    # And the high job's result is found through the queue's stream name
    ok = wait_until(lambda: (r := results.get(ok_id)) is not None and r.status.finished and r, WAIT)
    assert ok.status is flowd.JobStatus.SUCCEEDED


def test_an_id_two_bands_know_is_refused_rather_than_guessed(
    client: redis.Redis, stream: str
) -> None:
    high, _, low = band_streams(stream)
    client.xadd(high, {"n": "1"}, id="5-1")
    client.xadd(low, {"n": "2"}, id="5-1")
    with pytest.raises(flowd.ConfigurationError, match="known to 2 streams"):
        flowd.Results(client, stream).get("5-1")
    assert flowd.Results(client, low).get("5-1") is not None


def test_flowd_info_and_dlq_show_the_bands_as_part_of_the_queue(
    client: redis.Redis, redis_url: str, stream: str, make_queue: QueueFactory
) -> None:
    # Given a queue with a dead letter in its high band and waiting jobs in its low band
    producer = flowd.Producer(client, stream)
    producer.enqueue(Numbered(1), priority=5)
    done = threading.Event()

    def dead(task: flowd.Task[Numbered]) -> None:
        done.set()

    def work(task: flowd.Task[Numbered]) -> None:
        raise flowd.GiveUp("no")

    make_queue.run(make_queue(work, claimer=flowd.Claimer(dlq_worker=dead)))
    assert done.wait(WAIT)
    make_queue.stop_all()
    make_queue.handles.clear()
    producer.enqueue_bulk((Numbered(n) for n in range(3)), priority=-5)
    high, _, low = band_streams(stream)
    # Then flowd info shows each band under the queue, and the sums
    env = {"FLOWD_REDIS_URL": redis_url}
    info = run_flowd(["info", stream], env=env)
    assert info.returncode == 0, info.stderr
    assert f"stream {high}:" in info.stdout and f"stream {low}: 3 entries" in info.stdout
    assert f"queue {stream} with its 2 priority band(s): 4 entries" in info.stdout
    assert "1 dead letters" in info.stdout
    as_json = json.loads(run_flowd(["info", stream, "--json"], env=env).stdout)
    assert [band["stream"] for band in as_json["bands"]] == [high, low]
    # And flowd dlq lists the band's dead letter and requeues it by id
    listed = run_flowd(["dlq", "list", stream], env=env)
    assert listed.returncode == 0, listed.stderr
    dlq_id = flowd.DeadLetters(client, high).list()[0].dlq_id
    assert f"priority band {high} of the queue:\n{dlq_id}" in listed.stdout
    assert "reason=GiveUp: no" in listed.stdout
    requeued = run_flowd(["dlq", "requeue", stream, dlq_id], env=env)
    assert requeued.returncode == 0, requeued.stderr
    assert flowd.DeadLetters(client, high).list() == []
    assert client.xlen(high) == 2


def test_the_dashboard_shows_a_queues_bands_under_it(
    private_client: redis.Redis, stream: str
) -> None:
    # A server of its own: discovery shows at most MAX_STREAMS streams of a shared one
    client = private_client
    from flowd.dashboard import Dashboard

    producer = flowd.Producer(client, stream)
    producer.enqueue(Numbered(1))
    producer.enqueue(Numbered(2), priority=-1)
    client.xgroup_create(stream, GROUP, "0")
    client.xgroup_create(band_stream(stream, -1), GROUP, "0")
    _, _, low = band_streams(stream)
    assert Dashboard(client, [stream]).known_streams() == [stream, low]
    assert Dashboard(client).known_streams().count(low) == 1
    shown = Dashboard(client).known_streams()
    assert shown.index(low) == shown.index(stream) + 1


# ---------------------------------------------------------------------------
# With the other flow controls


def test_a_paused_queue_reads_no_band_and_runs_high_first_once_resumed(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    producer = flowd.Producer(client, stream)
    flowd.pause(client, stream)
    producer.enqueue_bulk((Numbered(n) for n in range(5)), priority=-1)
    producer.enqueue_bulk((Numbered(HIGH + n) for n in range(5)), priority=1)
    order: list[int] = []
    done = threading.Event()
    make_queue.run(make_queue(recording(order, 10, done), concurrency=1))
    time.sleep(1.0)
    assert order == []  # paused: nothing read from any band
    for band in band_streams(stream)[::2]:  # (no group yet, or one with nothing pending)
        assert all(int(g["pending"]) == 0 for g in client.xinfo_groups(band))
    flowd.resume(client, stream)
    assert done.wait(WAIT)
    assert order == [*range(HIGH, HIGH + 5), *range(5)]


def test_the_rate_limit_covers_every_band(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    producer = flowd.Producer(client, stream)
    producer.enqueue_bulk((Numbered(n) for n in range(50)), priority=-1)
    producer.enqueue_bulk((Numbered(HIGH + n) for n in range(50)), priority=1)
    order: list[int] = []
    done = threading.Event()
    limit = flowd.RateLimit(10, per=1.0, burst=2)
    make_queue.run(make_queue(recording(order, 100, done), concurrency=4, rate_limit=limit))
    first = wait_until(lambda: bool(order), WAIT) and time.monotonic()
    time.sleep(2.0)
    started = len(order)
    # At most limit x seconds + burst (and a little for the wait's own edges)
    assert 10 <= started <= 2 * 10 + 2 + 10, (started, time.monotonic() - first)
    # And what started is mostly high: one low in every STARVATION_EVERY + 1
    lows = [n for n in order[:started] if n < HIGH]
    assert len(lows) <= started // (STARVATION_EVERY + 1) + 1, order[:started]
