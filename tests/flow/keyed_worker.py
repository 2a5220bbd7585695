"""A worker process for tests/flow/test_concurrency_key.py; it runs until SIGTERM or SIGKILL.

Usage::

    python tests/flow/keyed_worker.py URL STREAM CONSUMER SECONDS HOT MIN_IDLE

It consumes ``STREAM`` (group ``g``, jobs with one int field ``n``, like
``tests.helpers.Numbered``) with concurrency 4 and
``concurrency_key``/``max_per_key=1``: jobs with ``n < HOT`` share the key ``hot``,
every other job has the key ``n``. Each job takes ``SECONDS`` (job 0 takes 60 when
``SECONDS`` is negative: the test kills the process meanwhile) and records itself:

- ``INCR <STREAM>:running:<key>`` at its start, ``DECR`` at its end; a value above 1
  at the start is a second job of one key running at once (``INCR <STREAM>:overlaps``);
- ``RPUSH <STREAM>:totals`` the number of jobs running at its start, in all processes;
- ``SADD <STREAM>:started n``, and at its end ``HSET <STREAM>:deliveries n deliveries``
  and ``RPUSH <STREAM>:done n``.

It prints ``ready`` once its queue runs.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import flowd
from tests.helpers import Numbered, worker_client


def key_of(hot: int) -> Any:
    return lambda job: "hot" if job.n < hot else job.n


def main(argv: list[str]) -> int:
    if len(argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    url, stream, consumer = argv[:3]
    seconds, hot, min_idle = float(argv[3]), int(argv[4]), float(argv[5])
    client = worker_client(url)
    key = key_of(hot)

    def work(task: flowd.Task[Numbered]) -> None:
        n = task.job.n
        running = f"{stream}:running:{key(task.job)}"
        if client.incr(running) > 1:
            client.incr(f"{stream}:overlaps")
        client.rpush(f"{stream}:totals", client.incr(f"{stream}:total"))
        client.sadd(f"{stream}:started", n)
        try:
            time.sleep(60.0 if seconds < 0 and n == 0 else abs(seconds))
        finally:
            client.decr(f"{stream}:total")
            client.decr(running)
        client.hset(f"{stream}:deliveries", str(n), task.deliveries)
        client.rpush(f"{stream}:done", n)

    queue = flowd.Queue(
        client,
        stream=stream,
        group="g",
        job=Numbered,
        worker=work,
        concurrency=4,
        consumer=consumer,
        block=0.5,
        claimer=flowd.Claimer(min_idle_time=min_idle),
        concurrency_key=key,
        max_per_key=1,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    handle = queue.run()
    print("ready", flush=True)
    stop.wait()
    return 0 if handle.stop(timeout=20) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
