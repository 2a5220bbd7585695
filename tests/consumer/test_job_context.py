"""Job context: current_task() names the running job, and JobLogFilter puts it on log records."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

import flowd
from tests.helpers import GROUP, Numbered, QueueFactory, wait_until


class Collect(logging.Handler):
    """Keeps the records it is given, after its filters ran."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(flowd.JobLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_current_task_is_the_running_job_and_none_outside(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a worker that notes what current_task() says while it runs
    seen: list[flowd.Task[Any] | None] = []

    def work(task: flowd.Task[Numbered]) -> None:
        seen.append(flowd.current_task())

    ids = flowd.Producer(client, stream).enqueue_bulk(Numbered(n) for n in range(3))
    # When the queue runs the jobs
    with make_queue(work).run():
        wait_until(lambda: len(seen) == 3)
    # Then each job saw its own task, and outside a job there is none
    assert sorted(t.id for t in seen if t is not None) == sorted(ids)
    assert all(t is not None and t.stream == stream for t in seen)
    assert flowd.current_task() is None


def test_job_log_filter_marks_the_jobs_records_and_only_those(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a handler with JobLogFilter, and a job that logs from its thread and from
    # a thread it starts, while the main thread logs too
    handler = Collect()
    log = logging.getLogger("tests.jobcontext")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    done = threading.Event()

    def work(task: flowd.Task[Numbered]) -> None:
        log.info("in the job %d", task.job.n)
        helper = threading.Thread(target=log.info, args=("helper thread",), name="test-helper")
        helper.start()
        helper.join()
        done.set()

    try:
        (msg_id,) = flowd.Producer(client, stream).enqueue_bulk([Numbered(7)])
        with make_queue(work).run():
            wait_until(done.is_set)
            log.info("main thread")
    finally:
        log.removeHandler(handler)
    by_message = {r.getMessage(): r for r in handler.records}
    # Then the job's record carries the three attributes
    job_record = by_message["in the job 7"]
    assert job_record.flowd_stream == stream
    assert job_record.flowd_job_id == msg_id
    assert job_record.flowd_delivery == 1
    # And the records of other threads do not
    for message in ("helper thread", "main thread"):
        assert not hasattr(by_message[message], "flowd_job_id"), message
        assert not hasattr(by_message[message], "flowd_stream"), message


def test_a_retried_jobs_records_carry_its_delivery(
    client: redis.Redis, stream: str, make_queue: QueueFactory
) -> None:
    # Given a job that fails its first run and logs on each
    handler = Collect()
    log = logging.getLogger("tests.jobcontext.retry")
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    def work(task: flowd.Task[Numbered]) -> None:
        log.info("run")
        if task.deliveries == 1:
            raise flowd.Retry(delay=0.05)

    try:
        flowd.Producer(client, stream).enqueue(Numbered(1))
        queue = make_queue(work, claimer=flowd.Claimer(min_idle_time=1, max_retries=3))
        with queue.run() as handle:
            wait_until(lambda: handle.stats().processed == 1)
    finally:
        log.removeHandler(handler)
    # Then its records say which delivery wrote them
    assert [r.flowd_delivery for r in handler.records] == [1, 2]
    assert client.xpending(stream, GROUP)["pending"] == 0
