"""One run of bench_django_tasks.py, in a fresh process (Django sets up once per process).

``python -m benchmarks.djtasks.driver CONTENDER BODY N LOGDIR``, with the environment of
:mod:`benchmarks.djtasks.settings`. It empties the backend's storage, queues the start
marker, times enqueueing ``N`` tasks with ``Task.enqueue()`` (the framework has no bulk
enqueue), starts the backend's own worker as a subprocess, starts the clock when the
marker has run, stops it when the backend's own record says that all ``N + 1`` tasks
succeeded, stops the worker (SIGTERM), checks some results through ``get_result``, and
prints one JSON line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import django

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from benchmarks.djtasks import tasks  # noqa: E402

try:
    from django.tasks import TaskResultStatus, task_backends
except ImportError:
    from django_tasks import TaskResultStatus, task_backends  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
POLL = 0.005
#: Seconds a worker gets to exit after SIGTERM, once every task is done.
STOP_WAIT = 15.0

#: Each contender's worker as its documentation runs it, long-running (the benchmark
#: stops it with SIGTERM once the clock stopped): flowd's ``--burst`` reads only as many
#: tasks as it has free threads, while a running worker reads ahead.
WORKERS: dict[str, list[str]] = {
    "flowd": ["flowd_worker", "--queue", "default"],
    "db": ["db_worker", "--no-startup-delay", "--queue-name", "default"],
    # rq's notes on performance: SimpleWorker runs jobs in the worker process; the
    # default Worker forks once per job (the "rq-fork" contender).
    "rq": [
        "rqworker",
        "--job-class",
        "django_tasks_rq.Job",
        "--worker-class",
        "rq.worker.SimpleWorker",
        "default",
    ],
    "rq-fork": ["rqworker", "--job-class", "django_tasks_rq.Job", "default"],
}


def marker_client() -> redis.Redis:
    return redis.Redis.from_url(f"{os.environ['BENCH_REDIS_URL']}/2")


def reset() -> Callable[[int], bool]:
    """Empty this backend's storage; the check that ``total`` tasks succeeded."""
    backend = settings.BACKEND
    if backend == "flowd":
        flowd_backend = task_backends["default"]
        client = flowd_backend.client
        client.flushdb()  # database 0 of the benchmark's private server
        stream = flowd_backend.stream("default")

        def flowd_done(total: int) -> bool:
            # Every entry read by the group, and none pending: each ack came with its
            # result (one atomic step), so every task is SUCCESSFUL or FAILED.
            last = client.xinfo_stream(stream)["last-generated-id"]
            group = client.xinfo_groups(stream)[0]
            return bool(group["pending"] == 0 and group["last-delivered-id"] == last)

        return flowd_done
    if backend == "db":
        from django_tasks_db.models import DBTaskResult

        table = DBTaskResult._meta.db_table
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"TRUNCATE {table}")
            else:
                cursor.execute(f"DELETE FROM {table}")
        successful = DBTaskResult.objects.filter(status=TaskResultStatus.SUCCESSFUL)
        return lambda total: bool(successful.count() == total)
    import django_rq

    django_rq.get_connection("default").flushdb()  # database 1 of the private server
    registry = django_rq.get_queue("default").finished_job_registry
    return lambda total: bool(registry.count == total)


def expected(body: str, n: int) -> Any:
    return tasks.expected_checksum(n) if body == "checksum" else None


def run(contender: str, body: str, count: int, logdir: Path) -> dict[str, Any]:
    done = reset()
    markers = marker_client()
    markers.delete(tasks.STARTED_KEY)
    task = tasks.BODIES[body]

    tasks.started.enqueue()
    begin = time.perf_counter()
    ids = [task.enqueue(n).id for n in range(count)]
    enqueue_s = time.perf_counter() - begin

    log = logdir / f"{contender}-{body}-{os.getpid()}.log"
    with log.open("wb") as out:
        spawned = time.perf_counter()
        worker = subprocess.Popen(
            [sys.executable, "-m", "django", *WORKERS[contender]],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # The clock starts when the marker ran: imports, checks and connecting are left
        # out for every worker alike.
        if markers.blpop([tasks.STARTED_KEY], timeout=120) is None:
            raise RuntimeError(f"the {contender} worker never ran the start marker; see {log}")
        start = time.perf_counter()
        limit = start + max(120.0, count / 20)
        while not done(count + 1):
            if worker.poll() is not None:
                raise RuntimeError(f"the {contender} worker exited early; see {log}")
            if time.perf_counter() > limit:
                raise RuntimeError(f"the {contender} worker did not finish in time; see {log}")
            time.sleep(POLL)
        run_s = time.perf_counter() - start
        worker.send_signal(signal.SIGTERM)  # a warm shutdown for all three
        try:
            worker.wait(STOP_WAIT)
            stopped = "exited"
        except subprocess.TimeoutExpired:
            # Seen with rq 3.0: its worker can hang unsubscribing from its pubsub
            # channel after a warm shutdown. The tasks are done; it is killed.
            stopped = "killed"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    for index in sorted({0, count // 2, count - 1}):
        result = task.get_result(ids[index])
        assert result.status == TaskResultStatus.SUCCESSFUL, (contender, result.status)
        assert result.return_value == expected(body, index), (contender, result.return_value)
    return {
        "enqueue_s": enqueue_s,
        "run_s": run_s,
        "startup_s": start - spawned,
        "stopped": stopped,
        "log": str(log),
    }


if __name__ == "__main__":
    contender_name, body_name, n_tasks, log_dir = sys.argv[1:5]
    print(json.dumps(run(contender_name, body_name, int(n_tasks), Path(log_dir))))
