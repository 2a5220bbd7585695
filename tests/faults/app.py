"""The app of the fault suite's worker processes.

Run as ``python -m flowd worker tests.faults.app:make_queue --processes 1``; it is
configured from the environment:

- ``FLOWD_REDIS_URL``; ``FAULTS_STREAM``; ``FAULTS_CONSUMER``: the consumer name
  (so the test knows which consumer a process it killed was);
- ``FAULTS_MIN_IDLE`` (claimer ``min_idle_time``, default 1 s),
  ``FAULTS_CONCURRENCY`` (default 4), ``FAULTS_SLEEP`` (seconds per job, default 0);
- ``FAULTS_HANG=1``: a job with ``hang=True`` never returns (``SADD {S}:hung <id>``
  first); elsewhere such a job runs like any other;
- ``FAULTS_BACKOFF``: seconds of the claimer's ``Backoff(initial=...)`` (default: none);
- ``FAULTS_FLAKY=1``: on its first delivery, every 50th job raises ``flowd.Retry()``
  (the backoff's delay) and every 50th from 25 on ``flowd.Retry(delay=0.3)``;
- ``FAULTS_RESULT_TTL``: the queue's ``result_ttl`` (default: no results); a job
  returns its ``n``.

Jobs are :class:`tests.faults.accounting.Item` and record each success as
described in :mod:`tests.faults.accounting`.
"""

from __future__ import annotations

import os
import threading
import time

import redis

import flowd
from tests.faults.accounting import GROUP, Item, JobFailed, key, record_success, records_client
from tests.helpers import numbered_queue

__all__ = ["make_queue"]


def make_queue() -> flowd.Queue[Item]:
    url = os.environ["FLOWD_REDIS_URL"]
    stream = os.environ["FAULTS_STREAM"]
    consumer = os.environ["FAULTS_CONSUMER"]
    min_idle = float(os.environ.get("FAULTS_MIN_IDLE", "1.0"))
    concurrency = int(os.environ.get("FAULTS_CONCURRENCY", "4"))
    default_sleep = float(os.environ.get("FAULTS_SLEEP", "0"))
    hang_allowed = os.environ.get("FAULTS_HANG") == "1"
    flaky = os.environ.get("FAULTS_FLAKY") == "1"
    backoff_initial = float(os.environ.get("FAULTS_BACKOFF", "0"))
    backoff = flowd.Backoff(initial=backoff_initial, maximum=2.0) if backoff_initial else None
    records = records_client(url)
    result_ttl = os.environ.get("FAULTS_RESULT_TTL")

    def work(task: flowd.Task[Item]) -> int:
        job = task.job
        if job.hang and hang_allowed:
            records.sadd(key(stream, "hung"), task.id)
            threading.Event().wait()  # forever
        seconds = job.sleep or default_sleep
        if seconds:
            time.sleep(seconds)
        if flaky and task.deliveries == 1 and job.n % 50 == 0:
            raise flowd.Retry()
        if flaky and task.deliveries == 1 and job.n % 50 == 25:
            raise flowd.Retry(delay=0.3)
        if job.fail:
            raise JobFailed(f"job {job.n} always fails")
        record_success(records, stream, task, consumer)
        return job.n

    return numbered_queue(
        redis.Redis.from_url(url),
        stream,
        work,
        group=GROUP,
        job=Item,
        concurrency=concurrency,
        consumer=consumer,
        claimer=flowd.Claimer(min_idle_time=min_idle, max_retries=50, backoff=backoff),
        housekeeping=flowd.Housekeeping(interval=2.0),
        result_ttl=None if result_ttl is None else float(result_ttl),
    )
