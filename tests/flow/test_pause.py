"""Pause and resume (flowd.pause / flowd.resume, ``flowd pause|resume``): every consumer of
a paused group stops reading and claiming within a second, running jobs finish and are
acked, the state survives worker restarts, and drain() of a paused queue does nothing."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

import flowd
from flowd._redis.keys import partition_base
from flowd.flow.pause import pause_key
from tests.cli.cli_app import Numbered as AppJob
from tests.cli.cli_app import key
from tests.cli.test_cli import TARGET, app_env, flowd_process
from tests.consumer.test_readahead import FAST, SLOW, SlowAfterFast, pending_rows, wait_for_buffered
from tests.helpers import (
    GROUP,
    QueueFactory,
    Recorder,
    enqueue_numbers,
    messages,
    pending_count,
    run_flowd,
    terminate,
    wait_until,
)
from tests.redis_cluster import RedisCluster

#: The promise: a consumer stops reading within this many seconds of a pause.
BOUND = 1.0
#: How long a test watches for jobs that must not start (beyond BOUND).
WATCH = 1.0


def members(client: redis.Redis, name: str) -> set[int]:
    return {int(m) for m in client.smembers(name)}  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# the API


def test_pause_resume_and_is_paused_keep_their_state_in_redis(
    any_client: redis.Redis, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a stream nobody paused
    assert not flowd.is_paused(any_client, stream, GROUP)
    # When one group is paused, Then that group is, the others and the stream are not
    assert flowd.pause(any_client, stream, "a") is True
    assert flowd.pause(any_client, stream, "a") is False  # already paused
    assert flowd.is_paused(any_client, stream, "a")
    assert not flowd.is_paused(any_client, stream, "b")
    assert not flowd.is_paused(any_client, stream)
    # When the whole stream is paused, Then every group is
    assert flowd.pause(any_client, stream) is True
    assert flowd.is_paused(any_client, stream, "b") and flowd.is_paused(any_client, stream)
    # The state is one hash in the stream's slot
    assert any_client.type(pause_key(stream)) in (b"hash", "hash")
    assert pause_key(stream) == "{" + stream + "}:paused"
    # Resuming one group while the stream is paused keeps it paused, and says so
    with caplog.at_level(logging.WARNING, logger="flowd"):
        assert flowd.resume(any_client, stream, "a") is True
    assert flowd.is_paused(any_client, stream, "a")
    assert messages(caplog, logging.WARNING, "stays paused")
    # Resuming the stream lifts every pause
    assert flowd.resume(any_client, stream) is True
    assert not flowd.is_paused(any_client, stream, "a")
    assert flowd.resume(any_client, stream) is False
    assert not any_client.exists(pause_key(stream))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", None), "stream must be a non-empty str"),
        (("s", ""), "group must be a non-empty str"),
        (("s", "*"), "other than '*'"),
        (("s", 7), "group must be"),
    ],
)
def test_bad_names_are_refused(client: redis.Redis, args: tuple[Any, Any], message: str) -> None:
    for call in (flowd.pause, flowd.resume, flowd.is_paused):
        with pytest.raises(flowd.ConfigurationError, match=message):
            call(client, *args)
    with pytest.raises(flowd.ConfigurationError, match="client"):
        flowd.pause("redis://x", "s")  # type: ignore[arg-type]


def test_a_partition_name_leads_back_to_its_queue() -> None:
    # What the dashboard uses to pause a partitioned queue from one partition's page
    for partitions in (2, 3, 17, 64):
        for name in flowd.partition_streams("orders", partitions):
            assert partition_base(name) == "orders"
    assert partition_base("a:b") is None and partition_base("{emails}") is None
    assert partition_base(flowd.partition_streams("a:b", 5)[4]) == "a:b"


# ---------------------------------------------------------------------------
# consumers in this process


def test_a_paused_group_stops_another_group_keeps_reading(
    client: redis.Redis, stream: str, make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Given two groups of one stream, each running, and group "a" paused
    a, b = Recorder(), Recorder()
    caplog.set_level(logging.INFO, logger="flowd")
    make_queue.run(make_queue(a, group="a"))
    make_queue.run(make_queue(b, group="b"))
    flowd.pause(client, stream, "a")
    time.sleep(BOUND)
    # When jobs arrive
    enqueue_numbers(client, stream, 20)
    # Then "b" runs them all, and "a" none
    wait_until(lambda: b.count == 20)
    time.sleep(0.5)  # had a's reader read them, it would have started some by now
    assert a.count == 0
    assert messages(caplog, logging.INFO, f"{stream}/a is paused")
    assert not messages(caplog, logging.INFO, f"{stream}/b is paused")
    # When "a" is resumed, Then it runs them too, and says so once
    flowd.resume(client, stream, "a")
    wait_until(lambda: a.count == 20, 5)
    assert len(messages(caplog, logging.INFO, f"{stream}/a is paused")) == 1
    assert len(messages(caplog, logging.INFO, f"{stream}/a resumed")) == 1


def test_the_claimer_claims_nothing_while_paused(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a queue whose claimer retries a failed job after 0.2 s
    runs: list[int] = []

    def fail_first(task: flowd.Task[Any]) -> None:
        runs.append(task.deliveries)
        if task.deliveries == 1:
            raise RuntimeError("first run fails")

    queue = make_queue(
        fail_first, claimer=flowd.Claimer(min_idle_time=0.2, interval=0.05, max_retries=3)
    )
    make_queue.run(queue)
    # When its one job fails, and the queue is paused at once
    enqueue_numbers(client, stream, 1)
    wait_until(lambda: runs == [1])
    flowd.pause(client, stream)
    # Then no retry is claimed while it is paused (the pause is seen within BOUND; the
    # first claim was due 0.2 s after the failure, so it may have come before that)
    time.sleep(BOUND)
    seen = list(runs)
    time.sleep(WATCH)
    assert runs == seen
    # When resumed, Then the retry runs and succeeds
    flowd.resume(client, stream)
    wait_until(lambda: runs[-1:] == [2] or len(runs) > 1, 5)
    wait_until(lambda: pending_count(client, stream) == 0, 5)


def test_running_jobs_finish_and_are_acked_after_a_pause(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given jobs that take 0.6 s, running on a queue with a claimer
    started = threading.Event()
    recorder = Recorder(lambda task: (started.set(), time.sleep(0.6)))
    make_queue.run(make_queue(recorder, concurrency=4, claimer=flowd.Claimer()))
    enqueue_numbers(client, stream, 4)
    wait_until(started.is_set)
    # When the queue is paused while they run
    flowd.pause(client, stream)
    # Then they finish, and their messages are acked
    wait_until(lambda: recorder.count == 4, 5)
    wait_until(lambda: pending_count(client, stream) == 0, 5)
    # And jobs enqueued after the pause wait in the stream
    time.sleep(BOUND)
    enqueue_numbers(client, stream, 5, start=100)
    time.sleep(WATCH)
    assert recorder.count == 4
    assert int(client.xlen(stream)) == 9
    flowd.resume(client, stream)
    wait_until(lambda: recorder.count == 9, 5)


def test_a_read_blocked_since_before_the_pause_starts_nothing(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a consumer blocked in a 10 s XREADGROUP on an empty stream, whose claimer
    # sweeps every 30 s
    recorder = Recorder()
    claimer = flowd.Claimer(interval=30)
    make_queue.run(make_queue(recorder, block=10, claimer=claimer))
    wait_until(lambda: client.info("clients")["blocked_clients"] >= 1)
    # When the stream is paused, and jobs arrive while that read still blocks
    flowd.pause(client, stream)
    time.sleep(BOUND)
    enqueue_numbers(client, stream, 3)
    # Then the read returns (the first of) them but starts none: what it read is handed
    # back, claimable by any claimer at once (idle for years)
    time.sleep(WATCH)
    assert recorder.count == 0
    rows: Any = client.xpending_range(stream, GROUP, min="-", max="+", count=10)
    assert rows and all(row["time_since_delivered"] > 10**9 for row in rows)
    # When resumed, Then the claimer runs them at once (the resume wakes it, long before
    # its next sweep), each as its first delivery
    flowd.resume(client, stream)
    wait_until(lambda: recorder.count == 3, 10)
    assert [d for _, d, _ in recorder.runs] == [1, 1, 1]


def test_read_ahead_messages_are_handed_back_on_a_pause(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a consumer with messages read ahead, waiting behind two slow jobs
    enqueue_numbers(client, stream, FAST + SLOW)
    recorder = Recorder(lambda task: body(task.job.n))
    body = SlowAfterFast(0.3)
    claimer = flowd.Claimer(min_idle_time=60.0, interval=60.0)
    queue = make_queue(recorder, concurrency=2, consumer="A", claimer=claimer)
    handle = make_queue.run(queue)
    wait_for_buffered(handle, body, 5)
    # When the stream is paused
    flowd.pause(client, stream)
    # Then the buffer is handed back, unstarted and idle for years (any claimer's to take)
    wait_until(lambda: handle.stats().buffered == 0, 5)
    time.sleep(BOUND)
    ran = set(recorder.ids())
    handed = {m: row for m, row in pending_rows(client, stream, "A").items() if m not in ran}
    assert handed
    assert all(idle > 3600_000 and deliveries <= 1 for idle, deliveries in handed.values())
    # And nothing more starts while it is paused
    time.sleep(WATCH)
    assert set(recorder.ids()) == ran
    body.seconds = 0.0  # the rest need not be slow
    # When resumed, Then the claimer runs the handed-back ones at once (not at its next
    # sweep, a minute away), as first deliveries, and every job runs exactly once
    flowd.resume(client, stream)
    wait_until(lambda: recorder.count == FAST + SLOW, 15)
    assert all(d == 1 for _, d, _ in recorder.runs)
    assert len(set(recorder.numbers())) == FAST + SLOW


def test_drain_of_a_paused_queue_returns_0_at_once_with_a_warning(
    client: redis.Redis, stream: str, make_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a backlog and a paused queue
    enqueue_numbers(client, stream, 10)
    flowd.pause(client, stream, GROUP)
    recorder = Recorder()
    queue = make_queue(recorder, claimer=flowd.Claimer())
    # When it is drained, Then nothing is read, and a WARNING names the stream and group
    with caplog.at_level(logging.WARNING, logger="flowd"):
        began = time.monotonic()
        assert queue.drain() == 0
        took = time.monotonic() - began
    assert recorder.count == 0
    assert took < 5.0  # at once: not a read with its block time, let alone the backlog
    warned = messages(caplog, logging.WARNING, "paused")
    assert warned and f"{stream}/{GROUP}" in warned[0]
    assert pending_count(client, stream) == 0
    # When resumed, Then the drain runs the backlog
    flowd.resume(client, stream, GROUP)
    assert queue.drain() == 10


def test_a_partitioned_queue_is_paused_by_its_base_name(client: redis.Redis, stream: str) -> None:
    # Given a queue over 3 partitions, paused by its base name
    recorder = Recorder()
    queue = flowd.Queue(
        client, stream=stream, group=GROUP, job=AppJob, worker=recorder, partitions=3
    )
    flowd.pause(client, stream)
    producer = flowd.Producer(client, stream, partitions=3)
    with queue.run():
        time.sleep(BOUND)
        producer.enqueue_bulk([AppJob(n) for n in range(30)])
        # Then no partition runs anything
        time.sleep(WATCH)
        assert recorder.count == 0
        # And flowd info shows each partition paused
        info = flowd.stream_info(client, queue.streams[1], base_stream=stream)
        assert info.paused and all(g.paused for g in info.groups)
        flowd.resume(client, stream)
        wait_until(lambda: recorder.count == 30, 5)


# ---------------------------------------------------------------------------
# several worker processes, across a restart


def wait_log(proc: Any, text: str, count: int, timeout: float = 30.0) -> None:
    wait_until(lambda: proc.stderr().count(text) >= count or proc.proc.poll() is not None, timeout)
    assert proc.stderr().count(text) >= count, proc.stderr()[-3000:]


def test_pause_stops_every_worker_process_and_survives_a_restart(
    client: redis.Redis, redis_url: str, stream: str, tmp_path: Path
) -> None:
    env = app_env(redis_url, stream, FLOWD_TEST_CONCURRENCY="2")
    slow = flowd.Producer(client, stream)
    started, done = key(stream, "started"), key(stream, "done")
    # Given 3 worker processes of one stream, each running a 1.5 s job
    (tmp_path / "first").mkdir()
    with flowd_process(
        ["worker", TARGET, "--processes", "3", "--shutdown-timeout", "10"], env, tmp_path / "first"
    ) as workers:
        wait_log(workers, "started: consumer", 3)
        slow.enqueue_bulk([AppJob(n, sleep=1.5) for n in range(6)])
        wait_until(lambda: len(members(client, started)) >= 3)
        # When the stream is paused
        flowd.pause(client, stream)
        # Then no job enqueued after the bound starts...
        time.sleep(BOUND)
        flowd.Producer(client, stream).enqueue_bulk([AppJob(n) for n in range(100, 120)])
        time.sleep(WATCH)
        assert not members(client, started) & set(range(100, 120))
        # ...and the jobs that were running finish and are acked
        first = members(client, started)
        wait_until(lambda: members(client, done) >= first, 10)
        wait_until(lambda: pending_count(client, stream) == 0, 10)
        # ...and every consumer said it saw the pause
        wait_log(workers, "is paused", 3)
        terminate(workers.proc, 20)
        assert workers.proc.returncode == 0, workers.stderr()[-3000:]
    # When new workers start while it is paused
    (tmp_path / "second").mkdir()
    with flowd_process(["worker", TARGET, "--processes", "2"], env, tmp_path / "second") as again:
        # Then they start paused, and run nothing
        wait_log(again, "is paused", 2)
        time.sleep(WATCH)
        assert not members(client, started) & set(range(100, 120))
        # When resumed, Then they run everything left, and say so
        flowd.resume(client, stream)
        wait_until(lambda: members(client, done) >= set(range(100, 120)), 10)
        wait_log(again, "resumed", 2)
        assert members(client, done) == first | set(range(100, 120))
        terminate(again.proc, 20)


# ---------------------------------------------------------------------------
# the command line


def test_flowd_pause_and_resume_and_info_shows_it(
    client: redis.Redis, redis_url: str, stream: str
) -> None:
    enqueue_numbers(client, stream, 1)
    client.xgroup_create(stream, GROUP, id="0")
    url = ["--url", redis_url]
    # When a group is paused from the command line
    result = run_flowd(["pause", stream, "--group", GROUP, *url])
    assert result.returncode == 0, result.stderr
    assert f"paused group {GROUP} of {stream}" in result.stdout
    assert flowd.is_paused(client, stream, GROUP)
    # Then flowd info shows it, as text and as JSON
    text = run_flowd(["info", stream, *url])
    assert text.returncode == 0, text.stderr
    assert f"group {GROUP}: " in text.stdout and text.stdout.rstrip().endswith("; paused")
    data = json.loads(run_flowd(["info", stream, "--json", *url]).stdout)
    assert data["paused"] is False and data["groups"][0]["paused"] is True
    # When the whole stream is paused, Then info says so
    result = run_flowd(["pause", stream, *url])
    assert result.returncode == 0 and f"paused {stream} (every group)" in result.stdout
    assert "paused: every group" in run_flowd(["info", stream, *url]).stdout
    # When it is resumed, Then no pause is left
    result = run_flowd(["resume", stream, *url])
    assert result.returncode == 0 and f"resumed {stream} (every group)" in result.stdout
    assert not flowd.is_paused(client, stream, GROUP)
    assert not client.exists(pause_key(stream))


def test_flowd_resume_of_a_partition_not_there_says_so(
    client: redis.Redis, redis_url: str, stream: str
) -> None:
    # A partition's name, of a queue that has no stream yet: both are said, not guessed
    partition = flowd.partition_streams(stream, 2)[1]
    result = run_flowd(["resume", partition, "--url", redis_url])
    assert result.returncode == 0
    assert "was not paused" in result.stdout
    assert f"a partition of the queue {stream!r}" in result.stderr
    assert f"flowd resume {stream}" in result.stderr
    assert f"no stream {partition!r}" in result.stderr
    assert not client.exists(pause_key(partition))


# ---------------------------------------------------------------------------
# Redis Cluster


def test_on_a_cluster_a_partitioned_queue_pauses_and_resumes(cluster: RedisCluster) -> None:
    client = cluster.client()
    try:
        stream = f"pause-{time.monotonic_ns()}"
        recorder = Recorder()
        queue = flowd.Queue(
            client, stream=stream, group=GROUP, job=AppJob, worker=recorder, partitions=3
        )
        flowd.pause(client, stream)
        with queue.run():
            time.sleep(BOUND)
            flowd.Producer(client, stream, partitions=3).enqueue_bulk(
                [AppJob(n) for n in range(30)]
            )
            time.sleep(WATCH)
            assert recorder.count == 0
            assert all(
                flowd.stream_info(client, s, base_stream=stream).paused for s in queue.streams
            )
            flowd.resume(client, stream)
            wait_until(lambda: recorder.count == 30, 10)
        assert not flowd.is_paused(client, stream)
    finally:
        client.close()
