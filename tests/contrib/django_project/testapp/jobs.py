"""Jobs of the test project. They record what they did in Redis, under ``<prefix>:...`` keys."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import flowd
from flowd.contrib.django import get_client, get_queue

PREFIX = os.environ.get("FLOWD_TEST_STREAM", "django")


def record(what: str, value: str) -> None:
    get_client().rpush(f"{PREFIX}:{what}", value)


@dataclass
class Welcome(flowd.Job):
    email: str
    fail: bool = False
    sleep: float = 0.0


@dataclass
class Report(flowd.Job):
    n: int


def send_welcome(task: flowd.Task[Welcome]) -> None:
    from tests.contrib.django_project.testapp.models import Signup

    if task.job.fail:
        raise RuntimeError(f"cannot send to {task.job.email}")
    time.sleep(task.job.sleep)
    # The consumer's name, as `flowd_worker --processes` renamed it (-w0, -w1...).
    get_client().hincrby(f"{PREFIX}:by_consumer", get_queue("emails").consumer, 1)
    # The database works on worker threads; a job queued on commit sees the row.
    in_db = Signup.objects.filter(email=task.job.email).exists()
    record("welcomed", f"{task.job.email} in-db={in_db}")


def make_report(task: flowd.Task[Report]) -> None:
    record("reports", str(task.job.n))


def dead(task: flowd.Task[Welcome]) -> None:
    record("dead", f"{task.job.email if task.job else None}: {task.error}")
