"""``@task`` functions of the test project, on the flowd backend of ``settings.TASKS``.

They record what they did in Redis under ``<prefix>:...`` keys, as the jobs do.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from django.tasks import TaskContext, task
except ImportError:  # Django < 6.0: the backport
    from django_tasks import TaskContext, task  # type: ignore[no-redef]

from flowd.contrib.django import get_client
from tests.contrib.django_project.testapp.jobs import PREFIX, record


@task()
def add(a: int, b: int) -> int:
    record("tasks", f"add {a} {b}")
    return a + b


@task()
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


@task()
def welcome(email: str) -> bool:
    from tests.contrib.django_project.testapp.models import Signup

    # The task was sent on commit: the worker thread's database connection sees the row.
    in_db = Signup.objects.filter(email=email).exists()
    record("tasks", f"welcome {email} in-db={in_db}")
    return in_db


@task(takes_context=True)
def flaky(context: TaskContext, failures: int) -> int:
    """Fails on its first ``failures`` attempts, then returns the attempt number."""
    record("flaky", str(context.attempt))
    if context.attempt <= failures:
        raise ValueError(f"attempt {context.attempt} fails")
    return int(context.attempt)


@task()
def always_fails() -> None:
    get_client().incr(f"{PREFIX}:always_fails")
    raise RuntimeError("this task always fails")


@task()
def heals(flag: str) -> str:
    """Fails until the key ``<prefix>:healed:<flag>`` exists (the test sets it once the
    task is dead), then returns ``flag``."""
    record("heals", flag)
    if not get_client().exists(f"{PREFIX}:healed:{flag}"):
        raise RuntimeError(f"{flag} is not healed yet")
    return flag


@task()
def stamp() -> int:
    """Records (and returns) Redis's clock when it ran, in ms."""
    seconds, micros = get_client().time()
    now = seconds * 1000 + micros // 1000
    record("stamps", str(now))
    return int(now)


@task()
async def double(x: int) -> int:
    await asyncio.sleep(0.01)
    # A coroutine task runs on the worker thread's own event loop.
    record("tasks", f"double {x} loop={type(asyncio.get_running_loop()).__name__}")
    return 2 * x


@task(queue_name="other")
def on_other(n: int) -> int:
    record("tasks", f"other {n}")
    return n


def not_a_task() -> None:
    """A plain function: a message naming it must be dead-lettered."""
