"""A job that hangs forever in a ``flowd worker`` process: SIGTERM stops the process on time
(exit 1, a WARNING naming the message), and another consumer reclaims the message."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import pytest
import redis

import flowd
from tests.faults.accounting import (
    Item,
    assert_exact,
    done_jobs,
    key,
    report,
    take_account,
    text,
    wait_settled,
)
from tests.faults.scenario import RecordingQueue
from tests.faults.workers import WorkerProcess
from tests.helpers import wait_until
from tests.redis_server import RedisServer

SHUTDOWN_TIMEOUT = 1.0
#: Beyond the shutdown timeout: interpreter exit, log flushing, a loaded CI machine.
MARGIN = 5.0


def log_time(stderr: str, pattern: str) -> datetime | None:
    """When the first flowd log line matching ``pattern`` was written (its asctime)."""
    for line in stderr.splitlines():
        if re.search(pattern, line):
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return None


def test_hung_job_process_stops_on_time_and_its_message_is_reclaimed(
    aof_server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(aof_server.url)
    stream = "hung"
    # Given a worker process whose job 25 hangs forever, among 50 ordinary jobs
    jobs = [Item(n, hang=n == 25) for n in range(51)]
    ids = flowd.Producer(client, stream).enqueue_bulk(jobs)
    by_id = dict(zip(ids, range(51), strict=True))
    hung_id = ids[25]
    worker = WorkerProcess(
        aof_server.url,
        stream,
        "hangs",
        tmp_path,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        FAULTS_HANG="1",
        FAULTS_MIN_IDLE="1.0",
    )
    status: int | None = None
    stopped_after = float("inf")
    stop_took: float | None = None  # from "received SIGTERM" to the WARNING of stop()
    rescuer = None
    settled_in: float | None = None
    handle = None
    try:
        wait_until(
            lambda: (
                client.sismember(key(stream, "hung"), hung_id)
                and len(done_jobs(client, stream)) == 50
            ),
            timeout=30,
            message="the other jobs done and job 25 hanging",
        )
        # When it gets SIGTERM
        signalled = time.monotonic()
        status = worker.terminate(timeout=SHUTDOWN_TIMEOUT + MARGIN)
        stopped_after = time.monotonic() - signalled
        if status is None:
            worker.kill()  # the process did not exit by itself: the assertion below says so
        stderr = worker.stderr()
        received = log_time(stderr, r"WARNING .*received SIGTERM")
        warned = log_time(stderr, rf"WARNING .*did not stop cleanly.*{re.escape(hung_id)}")
        if received is not None and warned is not None:
            stop_took = (warned - received).total_seconds()
        # And another consumer (in this process, whose jobs do not hang) runs afterwards
        rescuer = RecordingQueue(aof_server.url, stream, consumer="rescuer", min_idle=1.0)
        handle = rescuer.queue.run()
        settled_in = wait_settled(client, stream, set(range(51)), timeout=30)
    finally:
        worker.kill()
        if handle is not None:
            handle.stop(timeout=10)
        if rescuer is not None:
            rescuer.close()
    rescued = [run for run in rescuer.ledger.runs if run.msg_id == hung_id]
    account = take_account(client, stream, "hung job", by_id)
    account.extra.update(
        exit_status=status,
        stop_took=stop_took,
        stopped_after=round(stopped_after, 2),
        hung_rescued_delivery=rescued[0].deliveries if rescued else None,
        settled_in=None if settled_in is None else round(settled_in, 1),
    )
    report(capsys, account)
    runs = {text(k): int(v) for k, v in client.hgetall(key(stream, "runs")).items()}
    client.close()

    # Then the account is exact: the hung job ran to success elsewhere, nothing pending
    assert_exact(account)
    assert account.duplicates == 0
    assert [(run.ok, run.deliveries) for run in rescued] == [(True, 2)]
    assert set(runs) == set(ids)
    # And stop() returned on time, with a WARNING naming the hung message
    assert stop_took is not None, f"no WARNING naming {hung_id}:\n{worker.stderr()[-3000:]}"
    assert SHUTDOWN_TIMEOUT - 0.1 <= stop_took <= SHUTDOWN_TIMEOUT + 2.0
    # And the process exited with 1 within the timeout (plus a margin)
    assert status == 1, (
        f"exit status {status} (None: still running {SHUTDOWN_TIMEOUT + MARGIN}s after "
        f"SIGTERM, killed):\n{worker.stderr()[-3000:]}"
    )
    assert stopped_after <= SHUTDOWN_TIMEOUT + MARGIN
