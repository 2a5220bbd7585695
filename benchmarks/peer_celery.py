"""Celery's side of bench_compare.py: the app and its one task.

Run as ``celery -A peer_celery worker -P threads -c 8 -Q bench``. Settings, after
Celery's "Optimizing" and "Tasks" guides: a large prefetch multiplier for many short tasks,
and no result storage. ``task_acks_late`` makes an empty ``unacked`` hash mean that every
task has returned (the benchmark's completion check); the number of acks is the same
either way, only their moment changes, and flowd too acks after the job.
"""

from __future__ import annotations

import os

from bench_bodies import body_from_env
from celery import Celery

QUEUE = "bench"

app = Celery("peer_celery", broker=os.environ["BENCH_CELERY_URL"])
app.conf.update(
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=64,
    task_ignore_result=True,
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_body = body_from_env("BENCH_CELERY_URL")


@app.task(name="bench.job")
def job(n: int, key: str) -> None:
    _body(n, key)
