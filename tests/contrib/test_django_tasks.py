"""flowd as a backend of Django's Tasks framework, with the test project
(tests/contrib/django_project: its ``TASKS``, ``testapp/tasks.py``), real Redis, no mocks.

Django sets up once per process: the scenarios of ``task_scenarios.py`` and
``manage.py flowd_worker`` run in subprocesses, and these tests look at Redis.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import redis

import flowd
from flowd.contrib.django.tasks.records import TaskMessage
from flowd.dashboard import Dashboard
from tests.contrib.django_harness import REPO, recorded, scenario
from tests.dashboard.dashboard_server import http, serving
from tests.helpers import run_python, wait_until

#: `manage.py flowd_worker --burst --queue default`.
BURST_DEFAULT = ["-m", "django", "flowd_worker", "--burst", "--queue", "default"]


def task_scenario(name: str, env: dict[str, str], argument: Any = None) -> dict[str, Any]:
    return scenario(name, env, argument, module="task_scenarios")


def signals_of(client: redis.Redis, stream: str, result_id: str) -> list[str]:
    return [
        line.rsplit(" ", 1)[0]
        for line in recorded(client, stream, "signals")
        if line.endswith(result_id)
    ]


def test_enqueue_on_commit_then_the_burst_worker_runs_the_tasks(
    django_env: dict[str, str], client: redis.Redis, stream: str
) -> None:
    # Given tasks enqueued from a view in atomic() (one committed, one rolled back),
    # inside atomic() in code, and outside (see task_scenarios.enqueue)
    ids = task_scenario("enqueue", django_env)
    default = f"{stream}-tasks:default"
    # Then the committed ones were sent once each, and the rolled-back one never
    messages = [TaskMessage.from_fields(f) for _, f in client.xrange(default)]
    assert [m.task.rsplit(".", 1)[1] for m in messages] == ["welcome", "add", "echo", "double"]
    assert [m.result_id for m in messages] == [ids[k] for k in ("welcome", "add", "echo", "double")]
    assert messages[0].args == '["t@example.com"]'
    # And task_enqueued was sent for each, with the READY result
    assert signals_of(client, stream, ids["add"]) == ["task_enqueued add READY"]

    # When `manage.py flowd_worker --burst --queue default` runs
    done = run_python(
        ["-m", "django", "flowd_worker", "--burst", "--queue", "default"], env=django_env
    )

    # Then it ran the four tasks of that queue, with the database at hand, and exits 0
    assert done.returncode == 0, done.stderr
    assert "burst done: 4 jobs processed" in done.stderr, done.stderr
    assert sorted(recorded(client, stream, "tasks")) == [
        "add 2 3",
        "double 21 loop=_UnixSelectorEventLoop",
        "welcome t@example.com in-db=True",
    ]
    # And get_result(...) has their return values, attempts and times
    found = task_scenario("results", django_env, ids)
    assert found["worker"].startswith(os.uname().nodename), found
    # And the worker sent task_started and task_finished
    assert signals_of(client, stream, ids["add"]) == [
        "task_enqueued add READY",
        "task_started add RUNNING",
        "task_finished add SUCCESSFUL",
    ]
    assert client.xpending(default, "django-tasks")["pending"] == 0


def test_retries_dead_letters_and_run_after_with_a_running_worker(
    start_worker: Any, django_env: dict[str, str], client: redis.Redis, stream: str
) -> None:
    # Given `manage.py flowd_worker` running every task queue (MAX_RETRIES 2)
    proc, err = start_worker("--log-level", "INFO")
    started = f"queue {stream}-tasks:default/django-tasks started"
    wait_until(lambda: started in err.read_text(), timeout=20)

    # When tasks fail twice then succeed, always fail, or wait for run_after 2 s ahead
    # Then they end as task_scenarios.retries asserts
    ids = task_scenario("retries", django_env)

    # And the always-failing task ran MAX_RETRIES + 1 = 3 times and is in the dead letters
    assert client.get(f"{stream}:always_fails") == b"3"
    dead = flowd.DeadLetters(client, f"{stream}-tasks:default").list()
    assert len(dead) == 1, dead
    assert dead[0].fields["result_id"] == ids["failing"]
    assert "RuntimeError: this task always fails" in (dead[0].reason or "")
    # And the flaky one's context saw attempts 1, 2, 3
    assert recorded(client, stream, "flaky") == ["1", "2", "3"]
    # (task_enqueued is sent by the enqueuing process once the task is in Redis, so a
    # worker may have started it by then: only the worker's signals have an order)
    flaky_signals = signals_of(client, stream, ids["flaky"])
    assert flaky_signals.count("task_enqueued flaky READY") == 1, flaky_signals
    assert [s for s in flaky_signals if not s.startswith("task_enqueued")] == [
        "task_started flaky RUNNING",
        "task_finished flaky READY",
        "task_started flaky RUNNING",
        "task_finished flaky READY",
        "task_started flaky RUNNING",
        "task_finished flaky SUCCESSFUL",
    ]
    assert signals_of(client, stream, ids["failing"])[-1] == "task_finished always_fails FAILED"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, err.read_text()


def test_a_dead_task_shows_its_name_and_runs_again_once_requeued(
    start_worker: Any, django_env: dict[str, str], client: redis.Redis, redis_url: str, stream: str
) -> None:
    # Given a running worker (MAX_RETRIES 2) and two tasks that fail on every run
    proc, err = start_worker("--queue", "default", "--log-level", "INFO")
    wait_until(lambda: f"queue {stream}-tasks:default/" in err.read_text(), timeout=20)
    ids = task_scenario("enqueue_heals", django_env, ["cli", "dashboard"])
    default = f"{stream}-tasks:default"
    dead = flowd.DeadLetters(client, default)

    # Then each ends FAILED after MAX_RETRIES + 1 runs and sits in the dead letters
    failed = task_scenario("outcomes", django_env, {"ids": ids, "status": "FAILED"})
    for flag in ids:
        assert failed[flag] == {
            "status": "FAILED",
            "attempts": 3,
            "errors": ["builtins.RuntimeError"] * 3,
            "value": None,
        }, failed
    wait_until(lambda: len(dead.list()) == 2, timeout=10)
    path = "tests.contrib.django_project.testapp.tasks.heals"

    # And `flowd dlq list` names each task, called with its argument, not raw fields
    listed = run_python(["-m", "flowd", "dlq", "list", default, "--url", redis_url])
    assert listed.returncode == 0, listed.stderr
    assert f'    task: {path}("cli")\n    result id: {ids["cli"]}\n' in listed.stdout
    assert f'    task: {path}("dashboard")' in listed.stdout
    assert "fields:" not in listed.stdout and '"kwargs"' not in listed.stdout, listed.stdout
    by_flag = {letter.fields["args"]: letter.dlq_id for letter in dead.list()}

    # And so does the dashboard's stream page
    with serving(Dashboard(client, [default])) as base:
        status, headers, page = http(f"{base}/stream?name={default}")
        assert status == 200, page
        assert f"<dt>task</dt><dd>{path}(&#34;dashboard&#34;)</dd>" in page, page
        assert f"<dt>result id</dt><dd>{ids['dashboard']}</dd>" in page
        assert "<dt>kwargs</dt>" not in page

        # When both are healed, then requeued: one by `flowd dlq requeue`, the other
        # with the dashboard's Requeue button
        for flag in ids:
            client.set(f"{stream}:healed:{flag}", 1)
        requeued = run_python(
            ["-m", "flowd", "dlq", "requeue", default, by_flag['["cli"]'], "--url", redis_url]
        )
        assert requeued.returncode == 0, requeued.stderr
        assert f"requeued 1 messages from {{{default}}}:dead" in requeued.stdout, requeued.stdout
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        form = {
            "csrf": token[1] if token else cookie.split("=", 1)[1],
            "stream": default,
            "id": by_flag['["dashboard"]'],
        }
        status, _, answer = http(
            f"{base}/requeue", data=form, headers={"Cookie": cookie, "Origin": base}
        )
        assert status == 303, answer

    # Then each runs again and ends SUCCESSFUL, its earlier attempts kept
    done = task_scenario("outcomes", django_env, {"ids": ids, "status": "SUCCESSFUL"})
    for flag in ids:
        assert done[flag] == {
            "status": "SUCCESSFUL",
            "attempts": 4,
            "errors": ["builtins.RuntimeError"] * 3,
            "value": flag,
        }, done
    assert dead.list() == []
    assert sorted(recorded(client, stream, "heals")) == ["cli"] * 4 + ["dashboard"] * 4
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, err.read_text()


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("tests.contrib.django_project.testapp.tasks.gone", 'does not define a "gone"'),
        ("tests.contrib.django_project.testapp.nowhere.task", "No module named"),
        ("tests.contrib.django_project.testapp.tasks.not_a_task", "not a task"),
    ],
)
def test_a_task_path_that_cannot_run_is_dead_lettered_at_once(
    django_env: dict[str, str], client: redis.Redis, stream: str, path: str, reason: str
) -> None:
    # Given a message naming a path that does not import, or is not a task
    default = f"{stream}-tasks:default"
    message = TaskMessage(task=path, result_id="0" * 32)
    client.xadd(default, message.to_fields())  # type: ignore[arg-type]

    # When the burst worker runs the queue
    done = run_python(
        ["-m", "django", "flowd_worker", "--burst", "--queue", "default"], env=django_env
    )
    assert done.returncode == 0, done.stderr

    # Then the message is in the dead letters at once, with the reason, never retried
    dead = flowd.DeadLetters(client, default).list()
    assert len(dead) == 1, dead
    assert dead[0].deliveries == 1
    assert f"task {path!r} cannot run" in (dead[0].reason or ""), dead[0].reason
    assert reason in (dead[0].reason or ""), dead[0].reason
    assert client.xpending(default, "django-tasks")["pending"] == 0


def test_with_a_backlog_priority_50_tasks_start_before_priority_minus_50_ones(
    django_env: dict[str, str], client: redis.Redis, stream: str
) -> None:
    # Given a backlog of 20 tasks at priority -50, then 5 at priority 50
    ids = task_scenario("priorities", django_env)
    # When the burst worker runs the queue
    done = run_python(BURST_DEFAULT, env=django_env)
    assert done.returncode == 0, done.stderr
    # Then the 5 high ones started first (the worker's threads may swap neighbours)
    ran = recorded(client, stream, "tasks")
    assert sorted(ran[:5]) == sorted(f"add {n} 50" for n in range(5)), ran
    assert sorted(ran[5:]) == sorted(f"add {n} -50" for n in range(20)), ran
    # And every result is found, with its priority
    task_scenario("priority_results", django_env, ids)


def test_the_framework_checks_and_bad_settings(django_env: dict[str, str]) -> None:
    # Given the flowd backend, tasks the framework refuses, and broken TASKS settings
    # Then task_scenarios.validate finds what it asserts
    task_scenario("validate", django_env)


def test_manage_py_check_and_the_worker_report_bad_task_settings(
    django_env: dict[str, str], tmp_path: Path
) -> None:
    # Given settings whose TASKS options have a mistake
    (tmp_path / "bad_task_settings.py").write_text(
        "from tests.contrib.django_project.settings import *  # noqa: F403\n"
        "TASKS = {'default': {**TASKS['default'],\n"
        "    'OPTIONS': {**TASKS['default']['OPTIONS'], 'MAX_RETRIES': 'three'}}}\n"
    )
    env = {
        **django_env,
        "DJANGO_SETTINGS_MODULE": "bad_task_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
    }
    # When `manage.py check` runs, then it fails, naming the check and the setting
    checked = run_python(["-m", "django", "check"], env=env)
    assert checked.returncode == 1, checked.stderr
    assert "flowd.E002" in checked.stderr and "max_retries must be" in checked.stderr
    # And flowd_worker exits 2, as for other bad settings
    worker = run_python(["-m", "django", "flowd_worker", "--queue", "default"], env=env)
    assert worker.returncode == 2, worker.stderr
    assert "flowd.E002" in worker.stderr


def test_a_project_on_flowd_through_tasks_only_needs_no_flowd_setting(
    django_env: dict[str, str], client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    # Given settings with flowd's app and a FlowdBackend in TASKS, but no FLOWD
    (tmp_path / "tasks_only_settings.py").write_text(
        "from tests.contrib.django_project.settings import *  # noqa: F403\n"
        "del FLOWD  # noqa: F821\n"
        # The test app and the project's URLs use FLOWD's client: leave them out
        "INSTALLED_APPS = [a for a in INSTALLED_APPS if 'testapp' not in a]  # noqa: F405\n"
        "ROOT_URLCONF = 'tasks_only_urls'\n"
    )
    (tmp_path / "tasks_only_urls.py").write_text("urlpatterns = []\n")
    env = {
        **django_env,
        "DJANGO_SETTINGS_MODULE": "tasks_only_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
    }
    # When `manage.py check` runs, then it passes (no flowd.E001 for the missing FLOWD)
    checked = run_python(["-m", "django", "check"], env=env)
    assert checked.returncode == 0, checked.stderr
    # And the worker runs the task queues (echo: a task that needs no FLOWD client)
    default = f"{stream}-tasks:default"
    path = "tests.contrib.django_project.testapp.tasks.echo"
    message = TaskMessage(task=path, result_id="1" * 32, args="[5]")
    job_id = client.xadd(default, message.to_fields())  # type: ignore[arg-type]
    done = run_python(BURST_DEFAULT, env=env)
    assert done.returncode == 0, done.stderr
    assert "burst done: 1 jobs processed" in done.stderr, done.stderr
    result = flowd.Results(client, default, group="django-tasks").get(job_id.decode())
    assert result is not None and result.status is flowd.JobStatus.SUCCEEDED, result
    assert result.value == {"args": [5], "kwargs": {}}


def test_worker_processes_run_one_task_queue_as_separate_consumers(
    start_worker: Any, django_env: dict[str, str], client: redis.Redis, stream: str
) -> None:
    # Given `flowd_worker --queue other --processes 2`
    proc, err = start_worker("--queue", "other", "--processes", "2", "--shutdown-timeout", "5")
    wait_until(lambda: all(f"-w{i}, concurrency" in err.read_text() for i in (0, 1)), timeout=30)

    # When tasks are enqueued on that queue (see task_scenarios.many_on_other)
    ids = task_scenario("many_on_other", django_env, 12)

    # Then each runs once, and their worker ids name the children that ran them
    found = task_scenario("workers_of", django_env, ids)
    assert sorted(recorded(client, stream, "tasks")) == sorted(f"other {n}" for n in range(12))
    assert {worker[-3:] for worker in found["workers"]} <= {"-w0", "-w1"}, found
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, err.read_text()
    assert "all worker processes stopped" in err.read_text()
