"""flowd.contrib.django with a real Django project (tests/contrib/django_project), no mocks.

Django sets up once per process, so every scenario runs in a subprocess: the
settings and view scenarios of ``tests/contrib/django_project/scenarios.py``, and
``python -m django flowd_worker`` as a deployment would run it. The project's
jobs record what they did in Redis, where these tests look.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.contrib.django_harness import REPO, child_pids, recorded, scenario
from tests.helpers import run_python, wait_until
from tests.redis_server import free_port


def test_settings_build_queues_and_name_every_mistake(django_env: dict[str, str]) -> None:
    # Given the test project's FLOWD setting, and broken variants of it
    # When the scenario builds queues and producers from them
    # Then it finds what it asserts (see scenarios.config)
    scenario("config", django_env)


def test_views_enqueue_on_commit_and_the_burst_worker_runs_the_jobs(
    django_env: dict[str, str], client: redis.Redis, stream: str
) -> None:
    # Given views that enqueue in committed, rolled-back and no transactions
    result = scenario("views", django_env)

    # Then only the jobs of committed work (and the explicit on_commit=False one) are in Redis
    emails = [fields[b"email"] for _, fields in client.xrange(f"{stream}-emails")]
    assert emails == [b"a@example.com", b"c@example.com"]
    reports = client.xrange(f"{stream}-reports")
    assert [fields[b"n"] for _, fields in reports] == [b"7", b"8", b"9"]
    assert reports[0][0].decode() == result["report_id"]

    # When `manage.py flowd_worker --burst` runs every queue that has a worker
    done = run_python(["-m", "django", "flowd_worker", "--burst"], env=django_env)

    # Then it exits 0 after running each job once, with the database at hand
    assert done.returncode == 0, done.stderr
    assert "burst done: 5 jobs processed" in done.stderr
    assert sorted(recorded(client, stream, "welcomed")) == [
        "a@example.com in-db=True",
        "c@example.com in-db=False",
    ]
    assert sorted(recorded(client, stream, "reports")) == ["7", "8", "9"]
    assert client.xpending(f"{stream}-emails", "mailers")["pending"] == 0
    assert client.xpending(f"{stream}-reports", "reports")["pending"] == 0


def test_enqueue_without_a_database_sends_at_once(
    django_env: dict[str, str], client: redis.Redis, stream: str
) -> None:
    result = scenario("no_database", {**django_env, "FLOWD_TEST_NO_DB": "1"})
    ids = [i.decode() for i, _ in client.xrange(f"{stream}-reports")]
    assert ids == result["ids"]


def test_worker_runs_every_queue_retries_and_stops_cleanly_on_sigterm(
    start_worker: Any, client: redis.Redis, stream: str
) -> None:
    # Given jobs on both queues, one of which always fails
    client.xadd(f"{stream}-emails", {"email": "ok@example.com"})
    client.xadd(f"{stream}-emails", {"email": "bad@example.com", "fail": "true"})
    client.xadd(f"{stream}-reports", {"n": "1"})

    # When the worker runs every queue until SIGTERM
    proc, err = start_worker("--log-level", "INFO")
    wait_until(lambda: recorded(client, stream, "welcomed"), timeout=20)
    wait_until(lambda: recorded(client, stream, "reports"), timeout=10)
    # Then the failing job is retried by the claimer (MAX_RETRIES 1), then dead-lettered
    dead = wait_until(lambda: recorded(client, stream, "dead"), timeout=20)
    assert dead == ["bad@example.com: RuntimeError: cannot send to bad@example.com"]
    # (DLQ_WORKER runs before the move to the dead-letter stream)
    wait_until(lambda: client.xlen(f"{{{stream}-emails}}:dead") == 1, timeout=10)
    assert recorded(client, stream, "welcomed") == ["ok@example.com in-db=False"]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, err.read_text()
    log = err.read_text()
    assert "received SIGTERM: stopping gracefully" in log
    assert f"queue {stream}-emails/mailers stopped" in log
    assert f"queue {stream}-reports/reports stopped" in log


def test_worker_processes_run_as_separate_consumers(
    start_worker: Any, client: redis.Redis, stream: str
) -> None:
    # Given a worker with two processes for the emails queue
    proc, err = start_worker("emails", "--processes", "2", "--shutdown-timeout", "5")

    # (once both children have started their queue)
    wait_until(lambda: all(f"-w{i}, concurrency" in err.read_text() for i in (0, 1)), timeout=30)
    # When jobs that take a moment arrive
    for i in range(24):
        client.xadd(f"{stream}-emails", {"email": f"user{i}@example.com", "sleep": "0.1"})

    # Then both children consume them, as consumers of their own, and every job runs once
    wait_until(lambda: len(recorded(client, stream, "welcomed")) == 24, timeout=30)
    by_consumer = {
        name.decode()[-3:]: int(count)
        for name, count in client.hgetall(f"{stream}:by_consumer").items()
    }
    assert set(by_consumer) == {"-w0", "-w1"}, by_consumer
    assert sum(by_consumer.values()) == 24
    assert len(set(recorded(client, stream, "welcomed"))) == 24

    # And SIGTERM stops the children and the supervisor cleanly
    children = child_pids(proc.pid)
    assert len(children) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, err.read_text()
    assert child_pids(proc.pid) == []
    assert "all worker processes stopped" in err.read_text()


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["nope"], 2, "no queue 'nope'"),
        (["outbox"], 2, "has no 'WORKER'"),
        (["--processes", "2"], 2, "--processes runs one queue"),
        (["emails", "--processes", "0"], 2, "at least 1"),
    ],
)
def test_worker_usage_errors_exit_2(
    django_env: dict[str, str], args: list[str], status: int, message: str
) -> None:
    result = run_python(["-m", "django", "flowd_worker", *args], env=django_env)
    assert result.returncode == status, result.stderr
    assert message in result.stderr


def test_worker_exits_3_when_redis_is_unreachable(django_env: dict[str, str]) -> None:
    env = {**django_env, "FLOWD_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = run_python(
        ["-m", "django", "flowd_worker", "emails", "--connect-timeout", "0.3"], env=env
    )
    assert result.returncode == 3, result.stderr
    assert "cannot reach Redis" in result.stderr


def test_dashboard_mounted_behind_staff_login(django_env: dict[str, str]) -> None:
    # Given the dashboard mounted under /ops/flowd/ with django_urls (see scenarios.dashboard)
    # Then anonymous and non-staff users are redirected to login, and staff see the pages
    scenario("dashboard", django_env)


def test_worker_with_settings_that_fail_the_system_check_exits_2(
    django_env: dict[str, str], tmp_path: Path
) -> None:
    # Given settings whose WORKER path does not import (a system check error, flowd.E001)
    (tmp_path / "bad_settings.py").write_text(
        "from tests.contrib.django_project.settings import *  # noqa: F403\n"
        "FLOWD = {**FLOWD, 'QUEUES': {'emails': {**FLOWD['QUEUES']['emails'],\n"
        "    'WORKER': 'tests.contrib.django_project.testapp.no_such_module.send'}}}\n"
    )
    env = {
        **django_env,
        "DJANGO_SETTINGS_MODULE": "bad_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
    }

    # When flowd_worker starts
    result = run_python(["-m", "django", "flowd_worker", "emails"], env=env)

    # Then it exits 2, as the docs say of bad settings, naming the check and the path
    assert result.returncode == 2, result.stderr
    assert "flowd.E001" in result.stderr
    assert "no_such_module" in result.stderr
