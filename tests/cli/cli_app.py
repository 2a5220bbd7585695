"""An app module for the ``flowd worker`` tests in test_cli.py.

Everything comes from the environment, as a deployed app would take it:

- ``FLOWD_REDIS_URL``: the Redis to use (``flowd worker --url`` sets it too);
- ``FLOWD_TEST_STREAM`` and ``FLOWD_TEST_GROUP`` (default ``g``);
- ``FLOWD_TEST_SLEEP``: seconds each job takes (default 0); a job's own
  ``sleep`` field, when above 0, replaces it;
- ``FLOWD_TEST_CONCURRENCY`` (default 4) and ``FLOWD_TEST_MIN_IDLE`` (the
  claimer's ``min_idle_time``, default 30 s), ``FLOWD_TEST_MAX_RETRIES``
  (default 3);
- ``FLOWD_TEST_POISON``: the ``n`` of a poison job, which kills its process
  with ``os._exit(FLOWD_TEST_POISON_EXIT)`` (default 1) each time it runs;
- ``FLOWD_TEST_CLAIM_PAUSE``: seconds an ``on_claim`` hook waits before each
  claimed job other than the poison is handed to a worker, so that the poison
  (claimed first) kills the process while those are claimed but not started.

Targets: ``tests.cli.cli_app:make_queue`` (a callable returning a Queue),
``tests.cli.cli_app:queue`` (a module attribute that is a Queue, built lazily on
first access by ``make_queue()``), and, for the error tests,
``tests.cli.cli_app:not_a_queue`` and ``tests.cli.cli_app:make_not_a_queue``.

What it records, under keys named after the stream ``S`` (all in its slot):

- ``SADD {S}:pids <pid>`` once per process, when ``make_queue()`` runs
  (best effort: an unreachable Redis is the CLI's to report, not the app's);
- ``SADD {S}:started <n>`` when job ``n`` starts (``INCR {S}:attempts:<n>``
  when the poison starts, just before it kills its process);
- ``SADD {S}:done <n>``, ``INCR {S}:runs:<n>``, ``HINCRBY {S}:by_consumer
  <consumer> 1`` and ``HINCRBY {S}:by_pid <pid> 1`` when it finishes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import redis

import flowd
from tests.helpers import numbered_queue

__all__ = ["Numbered", "key", "make_not_a_queue", "make_queue", "not_a_queue"]

#: Not a Queue, and not callable: ``flowd worker tests.cli.cli_app:not_a_queue`` must refuse it.
not_a_queue = 42


@dataclass
class Numbered(flowd.Job):
    """Job ``n``; ``sleep`` > 0 overrides FLOWD_TEST_SLEEP for this job."""

    n: int
    sleep: float = 0.0


def key(stream: str, suffix: str) -> str:
    """A recording key of this app for ``stream``: ``{stream}:<suffix>``."""
    return f"{{{stream}}}:{suffix}"


def make_not_a_queue() -> str:
    """A callable that returns something other than a Queue."""
    return "not a queue"


def make_queue() -> flowd.Queue[Numbered]:
    """The app's queue, configured from the environment."""
    url = os.environ["FLOWD_REDIS_URL"]
    stream = os.environ["FLOWD_TEST_STREAM"]
    group = os.environ.get("FLOWD_TEST_GROUP", "g")
    default_sleep = float(os.environ.get("FLOWD_TEST_SLEEP", "0"))
    concurrency = int(os.environ.get("FLOWD_TEST_CONCURRENCY", "4"))
    min_idle = float(os.environ.get("FLOWD_TEST_MIN_IDLE", "30"))
    max_retries = int(os.environ.get("FLOWD_TEST_MAX_RETRIES", "3"))
    poison = int(os.environ.get("FLOWD_TEST_POISON", "-1"))
    poison_exit = int(os.environ.get("FLOWD_TEST_POISON_EXIT", "1"))
    claim_pause = float(os.environ.get("FLOWD_TEST_CLAIM_PAUSE", "0"))
    client = redis.Redis.from_url(url)
    pid = os.getpid()
    try:
        client.sadd(key(stream, "pids"), pid)
    except redis.exceptions.ConnectionError:
        pass  # the CLI checks the connection itself and reports it

    def work(task: flowd.Task[Numbered]) -> None:
        n = task.job.n
        if n == poison:
            client.incr(key(stream, f"attempts:{n}"))
            os._exit(poison_exit)
        client.sadd(key(stream, "started"), n)
        seconds = task.job.sleep if task.job.sleep > 0 else default_sleep
        if seconds:
            time.sleep(seconds)
        pipe = client.pipeline(transaction=False)
        pipe.sadd(key(stream, "done"), n)
        pipe.incr(key(stream, f"runs:{n}"))
        # queue.consumer is read at run time: `flowd worker --processes` renames it.
        pipe.hincrby(key(stream, "by_consumer"), queue.consumer, 1)
        pipe.hincrby(key(stream, "by_pid"), str(pid), 1)
        pipe.execute()

    queue: flowd.Queue[Numbered] = numbered_queue(
        client,
        stream,
        work,
        group=group,
        job=Numbered,
        concurrency=concurrency,
        claimer=flowd.Claimer(min_idle_time=min_idle, max_retries=max_retries),
        hooks=[_ClaimPause(claim_pause, poison)] if claim_pause > 0 else [],
    )
    return queue


class _ClaimPause(flowd.Hooks):
    """Holds each claimed job but the poison on the claimer thread for a while."""

    def __init__(self, seconds: float, poison: int) -> None:
        self.seconds = seconds
        self.poison = poison

    def on_claim(self, task: flowd.Task[Any]) -> None:
        if task.job is not None and task.job.n != self.poison:
            time.sleep(self.seconds)


_queue: flowd.Queue[Numbered] | None = None


def __getattr__(name: str) -> Any:
    """``queue``: the module's Queue, built on first access (the environment is read then)."""
    global _queue
    if name == "queue":
        if _queue is None:
            _queue = make_queue()
        return _queue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
