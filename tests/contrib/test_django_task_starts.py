"""Start records of first attempts, written in batches (flowd.contrib.django.tasks.starts),
and a result that counts a run whose start record is not written yet; real Redis."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from flowd.contrib.django.tasks import records, starts
from flowd.contrib.django.tasks.results import with_latest_run
from flowd.results import JobResult, JobStatus
from tests.faults.backend_proxy import BackendProxy
from tests.redis_server import RedisServer, free_port

TTL_MS = 60_000


def call(stream: str, n: int) -> records.StartCall:
    return records.start_call(stream, f"1-{n}", f"r{n}", "w1", TTL_MS, 1000 + n, False)


def starts_of(client: redis.Redis, stream: str, n: int) -> list[dict[str, Any]]:
    raw = client.lrange(records.attempts_key(stream, f"r{n}"), 0, -1)
    return [json.loads(item) for item in raw]


def test_records_added_while_one_is_written_go_in_the_next_write_and_none_waits(
    client: redis.Redis, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a batch whose first write is held until the other threads have added theirs
    writes: list[int] = []
    held = threading.Event()
    release = threading.Event()
    real_write = records.write_starts

    def write(target: Any, calls: list[records.StartCall]) -> None:
        writes.append(len(calls))
        if len(writes) == 1:
            held.set()
            assert release.wait(10)
        real_write(target, calls)

    monkeypatch.setattr(records, "write_starts", write)
    batch = starts.StartBatch(client)
    first = threading.Thread(target=batch.add, args=(call(stream, 0),))
    first.start()
    assert held.wait(10)
    # When 20 threads add a record each meanwhile
    others = [threading.Thread(target=batch.add, args=(call(stream, n),)) for n in range(1, 21)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join(10)
    # Then none of them waited for Redis (the writer takes theirs)
    assert not any(thread.is_alive() for thread in others)
    assert writes == [1]
    release.set()
    first.join(10)
    # And the writer wrote all 20 in one more write, each record once, with its expiry
    assert writes == [1, 20]
    for n in range(21):
        assert starts_of(client, stream, n) == [{"start": 1000 + n, "worker": "w1"}]
        assert client.get(records.task_key(stream, f"r{n}")) is None  # only alias and list
        assert client.get(records.alias_key(stream, f"r{n}")) == f"1-{n}".encode()
        assert 0 < client.pttl(records.attempts_key(stream, f"r{n}")) <= TTL_MS


def test_a_failed_write_keeps_its_records_for_the_next_one(stream: str) -> None:
    # Given a batch whose Redis is out of reach (a proxy to a port nobody listens on)
    server = RedisServer()
    server.start()
    proxy = BackendProxy(free_port()).start()
    client = redis.Redis.from_url(proxy.url, socket_timeout=2, retry_on_error=[])
    try:
        batch = starts.StartBatch(client)
        # When a record is added, the write fails and says so
        with pytest.raises(redis.exceptions.ConnectionError):
            batch.add(call(stream, 1))
        # And once Redis is back, the next write carries it, then the new one
        proxy.switch(server.port)
        batch.add(call(stream, 2))
        direct = redis.Redis.from_url(server.url)
        assert starts_of(direct, stream, 1) == [{"start": 1001, "worker": "w1"}]
        assert starts_of(direct, stream, 2) == [{"start": 1002, "worker": "w1"}]
        # And flush() with nothing waiting writes nothing and returns
        batch.flush()
        direct.close()
    finally:
        client.close()
        proxy.close()
        server.close()


def test_a_result_counts_the_latest_run_before_its_start_record_is_written() -> None:
    started = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    job = JobResult(
        id="1-1",
        status=JobStatus.SUCCEEDED,
        deliveries=1,
        started_at=started,
        finished_at=datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC),
        consumer="worker-a",
    )
    start_ms = int(started.timestamp() * 1000)
    # Given a succeeded job whose first attempt's start record is still in its batch
    counted = with_latest_run(records.Attempts([], [], None, None), job)
    # Then the run is counted from flowd's record: its worker and start time
    assert counted == records.Attempts(["worker-a"], [], start_ms, start_ms)
    # And once the record is there, nothing is counted twice
    written = records.Attempts(["worker-a"], [], 1000, 1000)
    assert with_latest_run(written, job) is written
    # And a retry's latest run joins the earlier ones, keeping their errors
    earlier = records.Attempts(["worker-b"], [("x.Boom", "tb")], 500, 500)
    again = with_latest_run(earlier, dataclasses.replace(job, deliveries=2))
    assert again == records.Attempts(["worker-b", "worker-a"], [("x.Boom", "tb")], 500, start_ms)
