"""A script that runs a queue the way README recommends, then simply ends (run in a subprocess).

Usage: python -m tests.consumer.lifecycle.script URL STREAM MODE, MODE one of:
``atexit`` (atexit.register(handle.stop, 10)), ``never`` (no stop at all), ``hung`` (a job that
never returns, stop_timeout=1), ``fork`` (fork after run(); the child reports what it sees, the
parent serves until SIGTERM, which it turns into SystemExit as gunicorn and Django do).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import redis

import flowd
from tests.helpers import numbered_queue

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@dataclass
class Step(flowd.Job):
    n: int
    hang: bool = False


def main() -> None:
    url, stream, mode = sys.argv[1:4]
    client = redis.Redis.from_url(url)
    done: list[int] = []
    release = threading.Event()

    def work(task: flowd.Task[Step]) -> None:
        if task.job.hang:
            release.wait(1000)  # never set: stands for a job stuck far past any timeout
        time.sleep(0.005)
        done.append(task.job.n)

    queue = numbered_queue(
        client,
        stream,
        work,
        job=Step,
        concurrency=4,
        claimer=flowd.Claimer(min_idle_time=30),
        stop_timeout=1 if mode == "hung" else 10,
    )
    handle = queue.run()
    if mode == "atexit":
        atexit.register(handle.stop, 10)
    producer = flowd.Producer(client, stream=stream)
    producer.enqueue_bulk([Step(n) for n in range(50)])
    if mode == "hung":
        producer.enqueue(Step(99, hang=True))
    deadline = time.monotonic() + 20
    while len(done) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"processed {len(done)}", flush=True)
    if mode == "fork":
        fork_and_serve(handle, stream)


def fork_and_serve(handle: flowd.QueueHandle, stream: str) -> None:
    pid = os.fork()
    if pid == 0:
        started = time.monotonic()
        clean = handle.stop(10)
        report = {
            "is_running": handle.is_running,
            "stop": clean,
            "stop_seconds": time.monotonic() - started,
            "joined": handle.join(1),
        }
        print("child " + json.dumps(report), flush=True)
        return  # the child exits through the normal interpreter exit
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    os.waitpid(pid, 0)
    print(f"parent serving, is_running={handle.is_running}", flush=True)
    while True:
        time.sleep(0.1)


if __name__ == "__main__":
    main()
