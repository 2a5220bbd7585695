"""Periodic schedules: validation, cron across DST, exactly-once ticks across processes."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

import flowd
from flowd._redis import scheduling as sched
from flowd._redis.keys import derived_key
from flowd.schedule import fire_schedules
from tests.helpers import Numbered, numbered_queue, wait_until


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


# -- construction


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({}, "exactly one of cron and every"),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron and every"),
        ({"cron": "61 * * * *"}, "not a valid expression"),
        ({"cron": "not cron"}, "not a valid expression"),
        ({"cron": ""}, "cron must be"),
        ({"every": 0}, "every"),
        ({"every": -3}, "every"),
        ({"every": "60"}, "every"),
        ({"cron": "0 3 * * *", "tz": "Mars/Olympus_Mons"}, "not a known time zone"),
        ({"every": 5, "tz": "../etc/passwd"}, "not a known time zone"),
    ],
)
def test_bad_schedules_fail_at_construction(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(flowd.ConfigurationError, match=named):
        flowd.Schedule("s", Numbered(1), **kwargs)


def test_schedule_job_must_be_a_job_or_a_callable() -> None:
    with pytest.raises(flowd.ConfigurationError, match="Job instance or a callable"):
        flowd.Schedule("s", 42, every=1)  # type: ignore[arg-type]
    with pytest.raises(flowd.ConfigurationError, match="name"):
        flowd.Schedule("", Numbered(1), every=1)
    with pytest.raises(flowd.EncodeError):
        flowd.Schedule("s", Numbered("x"), every=1)  # type: ignore[arg-type]


def test_queue_refuses_duplicate_or_foreign_schedules(client: redis.Redis, stream: str) -> None:
    one = flowd.Schedule("a", Numbered(1), every=1)
    for bad, text in [([one, one], "two schedules"), ([object()], "Schedule"), (one, "list")]:
        with pytest.raises(flowd.ConfigurationError, match=text):
            numbered_queue(client, stream, print, schedules=bad)


def test_spec_and_repr() -> None:
    every = flowd.Schedule("ping", Numbered, every=timedelta(minutes=1))
    cron = flowd.Schedule("nightly", Numbered(1), cron="0  3 * * *", tz="Europe/Paris")
    assert every.spec == "every 60" and cron.spec == "cron 0 3 * * * tz=Europe/Paris"
    assert "nightly" in repr(cron)


# -- Done when: cron across DST in Europe/Paris


def test_cron_across_dst_changes_in_paris_gives_the_right_utc_instants() -> None:
    daily = flowd.Schedule("daily", Numbered(1), cron="30 2 * * *", tz="Europe/Paris")
    ms = _ms(datetime(2026, 3, 27, 12, tzinfo=UTC))
    spring = []
    for _ in range(3):
        ms = daily.next_after(ms)
        spring.append(_utc(ms))
    assert spring == [
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),  # 02:30 CET (UTC+1)
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 02:30 does not exist: 03:00 CEST
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),  # 02:30 CEST (UTC+2)
    ]
    ms = _ms(datetime(2026, 10, 24, 0, 0, tzinfo=UTC))
    autumn = []
    for _ in range(3):
        ms = daily.next_after(ms)
        autumn.append(_utc(ms))
    assert autumn == [
        datetime(2026, 10, 24, 0, 30, tzinfo=UTC),  # 02:30 CEST
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 happens twice: once
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),  # 02:30 CET
    ]
    hourly = flowd.Schedule("hourly", Numbered(1), cron="0 * * * *", tz="Europe/Paris")
    ms = _ms(datetime(2026, 10, 24, 23, 30, tzinfo=UTC))
    hours = []
    for _ in range(4):
        ms = hourly.next_after(ms)
        hours.append(_utc(ms).hour)
    assert hours == [0, 1, 2, 3]  # an hourly job runs every real hour, the repeated one too


# -- firing: exactly once, collapsing, state


def _state(client: redis.Redis, stream: str, name: str) -> dict[str, Any]:
    raw = client.hget(sched.schedules_key(stream), name)
    assert raw is not None
    state: dict[str, Any] = json.loads(raw)
    return state


def test_missed_cron_ticks_collapse_into_one_run(client: redis.Redis, stream: str) -> None:
    schedule = flowd.Schedule("minutely", Numbered(5), cron="* * * * *")
    now_ms = _ms(datetime.now(UTC))
    old = now_ms - 10 * 60_000  # ten missed minutes
    client.hset(
        sched.schedules_key(stream),
        "minutely",
        json.dumps({"last": old, "next": schedule.next_after(old), "spec": schedule.spec}),
    )
    for _ in range(3):
        fire_schedules(client, stream, [schedule])
    assert client.xlen(stream) == 1
    state = _state(client, stream, "minutely")
    assert state["last"] >= now_ms - 1000 and state["next"] > state["last"]
    assert state["next"] % 60_000 == 0 and state["next"] - state["last"] <= 60_000


def test_concurrent_firing_enqueues_each_tick_once(client: redis.Redis, stream: str) -> None:
    schedule = flowd.Schedule("every", Numbered(1), every=0.2)
    fire_schedules(client, stream, [schedule])  # first sight: state only, first run in 0.2 s
    assert client.xlen(stream) == 0
    deadline = time.monotonic() + 2.0

    def fire() -> None:
        c = redis.Redis(connection_pool=client.connection_pool)
        while time.monotonic() < deadline:
            fire_schedules(c, stream, [schedule])

    threads = [threading.Thread(target=fire, name=f"test-fire-{i}") for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    times = [int(entry_id.split(b"-")[0]) for entry_id, _ in client.xrange(stream)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 6 <= len(times) <= 11, times
    # The script decides on TIME (microseconds); an entry id is stamped by XADD's own
    # millisecond clock read, which can fall up to 1 ms either side of it.
    assert min(gaps) >= 200 - 1, gaps


def test_factory_is_called_per_tick_and_its_failure_is_logged(
    client: redis.Redis, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def make() -> Numbered:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no job today")
        return Numbered(len(calls))

    schedule = flowd.Schedule("made", make, every=0.05)
    fire_schedules(client, stream, [schedule])
    time.sleep(0.1)
    with caplog.at_level(logging.ERROR, logger="flowd.schedule"):
        fire_schedules(client, stream, [schedule])
    assert "no job today" in caplog.text and client.xlen(stream) == 0
    schedule._retry_at = 0.0  # skip the retry pause
    fire_schedules(client, stream, [schedule])
    assert [fields[b"n"] for _, fields in client.xrange(stream)] == [b"2"]


def test_a_running_queue_fires_and_a_removed_schedule_stops(
    client: redis.Redis, stream: str
) -> None:
    ran: list[int] = []

    def work(task: flowd.Task[Numbered]) -> None:
        ran.append(task.job.n)

    schedule = flowd.Schedule("tick", Numbered(3), every=0.3)
    queue = numbered_queue(client, stream, work, schedules=[schedule])
    with queue.run():
        wait_until(lambda: len(ran) >= 2, timeout=10)
    state = flowd.ScheduledJobs(client, stream).schedule_states()
    assert [(s.name, s.spec) for s in state] == [("tick", "every 0.3")]
    assert state[0].last_run is not None and state[0].next_run is not None
    info = flowd.stream_info(client, stream)
    assert info.schedules == tuple(state) and "schedule tick (every 0.3)" in info.to_text()
    count = client.xlen(stream)
    plain = numbered_queue(client, stream, work)
    with plain.run():
        time.sleep(1.0)
    assert client.xlen(stream) == count


def test_drain_fires_due_schedules(client: redis.Redis, stream: str) -> None:
    ran: list[int] = []
    schedule = flowd.Schedule("tick", lambda: Numbered(8), every=0.1)
    queue = numbered_queue(client, stream, lambda t: ran.append(t.job.n), schedules=[schedule])
    assert queue.drain() == 0  # first sight: the first run is due in 0.1 s
    time.sleep(0.15)
    assert queue.drain() == 1 and ran == [8]


def test_schedules_of_a_partitioned_queue_fire_once(client: redis.Redis, stream: str) -> None:
    ran: list[str] = []
    schedules = [flowd.Schedule(f"s{i}", Numbered(i), every=0.2) for i in range(4)]
    queue = numbered_queue(
        client, stream, lambda t: ran.append(t.stream), schedules=schedules, partitions=3
    )
    with queue.run():
        time.sleep(1.1)
    streams = flowd.partition_streams(stream, 3)
    names = [s.name for st in streams for s in flowd.ScheduledJobs(client, st).schedule_states()]
    assert sorted(names) == ["s0", "s1", "s2", "s3"]
    assert 4 * 3 <= len(ran) <= 4 * 6


# -- Done when: three processes for 10 s, then a restart after 5 s


@pytest.fixture
def apps(redis_url: str, stream: str) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _start(procs: list[subprocess.Popen[str]], redis_url: str, stream: str, n: int) -> None:
    env = {
        **os.environ,
        "FLOWD_REDIS_URL": redis_url,
        "FLOWD_TEST_STREAM": stream,
        "FLOWD_TEST_EVERY": "1",
    }
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.scheduling.schedule_app"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )
        for _ in range(n)
    ]
    for proc in started:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "running"
    procs.extend(started)


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        assert proc.wait(20) == 0


def _redis_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


@pytest.mark.slow
def test_every_schedule_in_three_processes_runs_once_per_tick_and_catches_up_once(
    client: redis.Redis, redis_url: str, stream: str, apps: list[subprocess.Popen[str]]
) -> None:
    ticks_key = derived_key(stream, "ticks")

    def ticks() -> list[int]:
        return sorted(int(i.split(b"-")[0]) for i in client.lrange(ticks_key, 0, -1))

    _start(apps, redis_url, stream, 3)
    begin = _redis_ms(client)
    time.sleep(10)
    end = _redis_ms(client)
    _stop(apps)
    window = [t for t in ticks() if begin <= t <= end]
    assert 9 <= len(window) <= 11, window
    stopped = _redis_ms(client)
    before = len(ticks())
    time.sleep(5)
    restart: list[subprocess.Popen[str]] = []
    _start(restart, redis_url, stream, 1)
    apps.extend(restart)
    back = _redis_ms(client)
    time.sleep(1.8)
    _stop(restart)
    runs = ticks()
    after = [t for t in runs if t > stopped]
    print(f"\nticks in 10 s with 3 processes: {len(window)}; after the restart: {after}")
    assert len(runs) - before == len(after)
    # One catch-up run at once (not five), then the schedule goes on every second.
    assert 1 <= len(after) <= 3 and after[0] - back < 1000, (back, after)
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert min(gaps) >= 500, gaps
