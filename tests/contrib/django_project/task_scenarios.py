"""Django Tasks scenarios of tests/contrib/test_django_tasks.py, each in a fresh process.

``python -m tests.contrib.django_project.task_scenarios NAME [JSON]`` with
``DJANGO_SETTINGS_MODULE`` set: it sets Django up, runs scenario NAME with the JSON
argument (assertions inside), and prints ``ok`` and a JSON line of results.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import django

django.setup()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import SystemCheckError  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.utils import timezone  # noqa: E402

from flowd.contrib.django import get_client  # noqa: E402
from flowd.contrib.django.tasks import FlowdBackend  # noqa: E402
from flowd.contrib.django.tasks._compat import FRAMEWORK  # noqa: E402
from tests.contrib.django_project.scenarios import raises  # noqa: E402
from tests.contrib.django_project.testapp import tasks  # noqa: E402

if FRAMEWORK == "django.tasks":
    from django.tasks import TaskResultStatus, task, task_backends
    from django.tasks.exceptions import InvalidTask as InvalidTaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
else:
    from django_tasks import TaskResultStatus, task, task_backends  # type: ignore[no-redef]
    from django_tasks.exceptions import (
        InvalidTaskError,  # type: ignore[no-redef]
        TaskResultDoesNotExist,  # type: ignore[no-redef]
    )


def backend() -> FlowdBackend:
    found = task_backends["default"]
    assert isinstance(found, FlowdBackend), found
    return found


def redis_now_ms() -> int:
    seconds, micros = get_client().time()
    return int(seconds * 1000 + micros // 1000)


def wait_finished(result_id: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = backend().get_result(result_id)
        if result.is_finished or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def enqueue(_: Any) -> dict[str, Any]:
    call_command("migrate", verbosity=0)
    redis = get_client()
    default = backend().stream("default")
    client = Client(raise_request_exception=False)

    # When a view writes a row and enqueues its task in one transaction that commits
    response = client.post("/tasks/signup/", {"email": "t@example.com"})
    # Then its result id is known and READY, and the task was sent once
    assert response.status_code == 201, response.content
    committed = response.json()
    assert committed["status"] == "READY" and len(committed["id"]) == 32, committed
    assert redis.xlen(default) == 1

    # When the transaction rolls back after the enqueue, nothing is sent
    response = client.post("/tasks/signup/?fail=1", {"email": "u@example.com"})
    assert response.status_code == 500
    assert redis.xlen(default) == 1

    # When a task is enqueued inside atomic(), its id is known before the commit...
    with transaction.atomic():
        inside = tasks.add.enqueue(2, 3)
        assert inside.status == TaskResultStatus.READY and inside.enqueued_at is not None
        # ...but nothing is in Redis until the commit
        assert redis.xlen(default) == 1
        raises(TaskResultDoesNotExist, inside.id, lambda: backend().get_result(inside.id))
    assert redis.xlen(default) == 2
    # And after it the same id finds the task, READY, with its arguments
    found = tasks.add.get_result(inside.id)
    assert (found.status, found.args, found.kwargs) == (TaskResultStatus.READY, [2, 3], {})
    assert found.attempts == 0 and found.errors == [] and found.started_at is None
    assert found.enqueued_at is not None

    # And arguments are JSON round-tripped, as the framework says
    echo = tasks.echo.enqueue((1, 2), "x", key={"a": (3,)})
    assert echo.args == [[1, 2], "x"] and echo.kwargs == {"key": {"a": [3]}}
    double = tasks.double.enqueue(21)
    other = tasks.on_other.enqueue(7)
    assert redis.xlen(backend().stream("other")) == 1

    # And an id nobody handed out is the framework's TaskResultDoesNotExist
    raises(TaskResultDoesNotExist, "nope", lambda: backend().get_result("nope"))
    return {
        "welcome": committed["id"],
        "add": inside.id,
        "echo": echo.id,
        "double": double.id,
        "other": other.id,
    }


def results(ids: dict[str, str]) -> dict[str, Any]:
    # Given the tasks of `enqueue`, after `flowd_worker --burst --queue default`
    add = tasks.add.get_result(ids["add"])
    assert add.status == TaskResultStatus.SUCCESSFUL, add.status
    assert add.return_value == 5
    assert add.attempts == 1 and add.errors == [] and len(add.worker_ids) == 1
    assert add.enqueued_at <= add.started_at <= add.finished_at, add
    assert add.last_attempted_at == add.started_at
    assert tasks.welcome.get_result(ids["welcome"]).return_value is True
    echo = tasks.echo.get_result(ids["echo"])
    assert echo.return_value == {"args": [[1, 2], "x"], "kwargs": {"key": {"a": [3]}}}
    assert tasks.double.get_result(ids["double"]).return_value == 42
    # And a queue the worker was not asked to run was left alone
    other = tasks.on_other.get_result(ids["other"])
    assert other.status == TaskResultStatus.READY
    raises(ValueError, "not finished", lambda: other.return_value)
    # And refresh() reads the result again
    stale = backend().get_result(ids["add"])
    stale.refresh()
    assert stale.return_value == 5
    return {"worker": add.worker_ids[0]}


def retries(_: Any) -> dict[str, Any]:
    # Given a running worker (MAX_RETRIES 2, quick backoff)
    # When a task fails twice, then succeeds
    flaky = tasks.flaky.enqueue(2)
    # And a task always fails
    failing = tasks.always_fails.enqueue()
    # And a task may not start before 2 s from now (Redis's clock)
    sent_ms = redis_now_ms()
    later = tasks.stamp.using(run_after=timezone.now() + timedelta(seconds=2)).enqueue()

    # Then the flaky one ran three times, two errors with tracebacks, and SUCCESSFUL
    done = wait_finished(flaky.id)
    assert done.status == TaskResultStatus.SUCCESSFUL, (done.status, done.errors)
    assert done.attempts == 3 and done.return_value == 3, done
    assert len(done.errors) == 2
    for number, error in enumerate(done.errors, start=1):
        assert error.exception_class_path == "builtins.ValueError", error
        assert error.exception_class is ValueError
        assert error.traceback.startswith("Traceback (most recent call last)"), error.traceback
        assert f"ValueError: attempt {number} fails" in error.traceback, error.traceback
    assert done.started_at < done.last_attempted_at <= done.finished_at

    # And the failing one ends FAILED after MAX_RETRIES + 1 runs
    dead = wait_finished(failing.id)
    assert dead.status == TaskResultStatus.FAILED, dead.status
    assert dead.attempts == 3 and len(dead.errors) == 3, dead
    assert "RuntimeError: this task always fails" in dead.errors[-1].traceback
    raises(ValueError, "failed", lambda: dead.return_value)

    # And the delayed one waited (READY meanwhile) and ran at its time, not before
    assert tasks.stamp.get_result(later.id).status == TaskResultStatus.READY
    ran = wait_finished(later.id)
    assert ran.status == TaskResultStatus.SUCCESSFUL, ran.status
    assert ran.return_value >= sent_ms + 2000, (ran.return_value, sent_ms)
    return {"flaky": flaky.id, "failing": failing.id, "later": later.id}


def validate(_: Any) -> dict[str, Any]:
    # Given the flowd backend
    flowd = backend()
    assert (flowd.supports_defer, flowd.supports_get_result, flowd.supports_async_task) == (
        True,
        True,
        True,
    )
    assert flowd.supports_priority is True

    # Then the framework's own checks of a task hold on it
    def local() -> None:
        pass

    raises(InvalidTaskError, "module level", lambda: task()(local))
    raises(InvalidTaskError, "'context'", lambda: task(takes_context=True)(tasks.not_a_task))
    assert tasks.add.using(priority=5).priority == 5
    raises(InvalidTaskError, "priority", lambda: tasks.add.using(priority=500))
    raises(InvalidTaskError, "Queue 'nope'", lambda: tasks.add.using(queue_name="nope"))
    naive = timezone.now().replace(tzinfo=None)
    raises(InvalidTaskError, "aware", lambda: tasks.add.using(run_after=naive))
    tasks.add.using(queue_name="other", run_after=timezone.now())  # fine

    # And every settings mistake is ImproperlyConfigured on use and flowd.E002 in check
    url = flowd.flowd_options.url
    good = {"BACKEND": "flowd.contrib.django.tasks.FlowdBackend", "QUEUES": ["default"]}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"OPTIONS": {"URL": url, "MAX_RETRIES": -1}}, "max_retries must be"),
        ({"OPTIONS": {"URL": url, "RETRIES": 3}}, "unknown keys ['RETRIES']"),
        ({"OPTIONS": {"URL": url, "BACKOFF": {"INITIAL": 5, "MAXIMUM": 1}}}, "maximum"),
        ({"OPTIONS": {"URL": url, "CONCURRENCY": 0}}, "CONCURRENCY"),
        ({"OPTIONS": {"URL": url, "ENQUEUE_ON_COMMIT": "yes"}}, "ENQUEUE_ON_COMMIT"),
        ({"OPTIONS": {"URL": "nota://host"}}, "cannot build a Redis client"),
        ({"QUEUES": [], "OPTIONS": {"URL": url}}, "is empty"),
        ({"QUEUES": ["a}b"], "OPTIONS": {"URL": url}}, "queue 'a}b'"),
    ]
    for entry, text in cases:
        with override_settings(TASKS={"default": {**good, **entry}}):
            message = raises(SystemCheckError, text, lambda: call_command("check"))
            assert "flowd.E002" in message, message
            raises(ImproperlyConfigured, text, lambda: tasks.add.enqueue(1, 2))
    call_command("check")
    return {}


def enqueue_heals(flags: list[str]) -> dict[str, Any]:
    return {flag: tasks.heals.enqueue(flag).id for flag in flags}


def outcomes(wanted: dict[str, Any]) -> dict[str, Any]:
    """Each task of ``wanted["ids"]`` once its status is ``wanted["status"]`` (or after
    30 s): status, attempts, errors' class paths, return value."""
    found = {}
    for name, result_id in wanted["ids"].items():
        deadline = time.monotonic() + 30
        result = backend().get_result(result_id)
        while result.status.name != wanted["status"] and time.monotonic() < deadline:
            time.sleep(0.05)
            result = backend().get_result(result_id)
        found[name] = {
            "status": result.status.name,
            "attempts": result.attempts,
            "errors": [error.exception_class_path for error in result.errors],
            "value": result.return_value if result.status == TaskResultStatus.SUCCESSFUL else None,
        }
    return found


def many_on_other(count: int) -> dict[str, Any]:
    return {"ids": [tasks.on_other.enqueue(n).id for n in range(count)]}


def workers_of(found: dict[str, list[str]]) -> dict[str, Any]:
    workers = []
    for result_id in found["ids"]:
        result = wait_finished(result_id)
        assert result.status == TaskResultStatus.SUCCESSFUL, result.status
        assert result.attempts == 1, result.worker_ids
        workers.append(result.worker_ids[0])
    return {"workers": workers}


def priorities(_: Any) -> dict[str, Any]:
    """A backlog of 20 tasks at priority -50, then 5 at priority 50; their result ids."""
    low = [tasks.add.using(priority=-50).enqueue(n, -50).id for n in range(20)]
    high = [tasks.add.using(priority=50).enqueue(n, 50).id for n in range(5)]
    return {"low": low, "high": high}


def priority_results(ids: dict[str, Any]) -> dict[str, Any]:
    """Every task of :func:`priorities` is found and SUCCESSFUL, with its priority."""
    for name, priority in (("low", -50), ("high", 50)):
        for result_id in ids[name]:
            result = backend().get_result(result_id)
            assert result.status == TaskResultStatus.SUCCESSFUL, result.status
            assert result.task.priority == priority, result.task.priority
    return {}


SCENARIOS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "enqueue": enqueue,
    "results": results,
    "retries": retries,
    "validate": validate,
    "enqueue_heals": enqueue_heals,
    "outcomes": outcomes,
    "many_on_other": many_on_other,
    "workers_of": workers_of,
    "priorities": priorities,
    "priority_results": priority_results,
}

if __name__ == "__main__":
    argument = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    outcome = SCENARIOS[sys.argv[1]](argument)
    print("ok")
    print(json.dumps(outcome))
