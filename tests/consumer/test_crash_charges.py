"""A job that kills its process (``os._exit``) is charged its own runs, and only those.

Real ``flowd worker`` processes of ``tests/cli/cli_app.py`` run a poison job that
calls ``os._exit`` each time it starts. The entries claimed in the same batch
as the poison, but not started when it kills the process, must not spend
their retries; the poison is dead-lettered after exactly ``max_retries + 1``
runs; and ``--processes`` restarts a child whose job exits 2 instead of taking
that for bad usage and stopping every worker.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import redis

from flowd._redis.keys import dead_letter_stream, derived_key
from tests.cli.cli_app import key
from tests.cli.test_cli import (
    GROUP,
    TARGET,
    app_env,
    as_str,
    done,
    enqueue,
    flowd_process,
    pending_ids,
    queues_started,
)
from tests.helpers import wait_until

POISON = 0


def dead_letters(client: redis.Redis, stream: str) -> list[dict[str, str]]:
    return [
        {as_str(k): as_str(v) for k, v in fields.items()}
        for _, fields in client.xrange(dead_letter_stream(stream))
    ]


def attempts(client: redis.Redis, stream: str) -> int:
    return int(client.get(key(stream, f"attempts:{POISON}")) or 0)


def test_a_job_that_kills_its_process_spends_only_its_own_retries(
    client: redis.Redis, redis_url: str, stream: str, tmp_path: Path
) -> None:
    # Given a poison job that calls os._exit(1) whenever it runs, and three normal jobs
    # (200 ms each) after it: with concurrency 4 they are read, and later claimed, in one
    # batch with the poison. A slow on_claim hook holds each claimed normal job for 0.5 s
    # before it reaches a worker, so the poison (claimed first) kills the process while
    # they are claimed but not started: the race a real crash leaves to chance.
    ids = enqueue(client, stream, range(4), sleep=0.2)
    env = app_env(
        redis_url,
        stream,
        FLOWD_TEST_POISON=str(POISON),
        FLOWD_TEST_MIN_IDLE="0.5",
        FLOWD_TEST_MAX_RETRIES="3",
        FLOWD_TEST_CLAIM_PAUSE="0.5",
    )
    args = ["worker", TARGET, "--shutdown-timeout", "10"]
    crashes: list[int] = []
    for run in range(8):
        # When a worker process runs the queue, and another takes over each time one dies
        (tmp_path / f"run{run}").mkdir()
        with flowd_process(args, env, tmp_path / f"run{run}") as worker:
            settled = wait_until(
                lambda: (
                    (worker.proc.poll() is not None)
                    or (bool(dead_letters(client, stream)) and not pending_ids(client, stream))
                ),
                timeout=60,
                message="the worker neither died nor settled the jobs",
            )
            assert settled
            if worker.proc.poll() is not None:
                crashes.append(worker.proc.returncode)
                continue
            # Then the poison alone is dead-lettered: the normal jobs claimed with it never
            # spent their retries on its crashes, and all of them ran to the end
            dead = dead_letters(client, stream)
            assert [entry["flowd:id"] for entry in dead] == [ids[POISON]], dead
            assert done(client, stream) == {1, 2, 3}
            # And the process lives on and runs new jobs
            more = enqueue(client, stream, range(4, 34))
            wait_until(lambda: done(client, stream) == set(range(1, 34)), timeout=60)
            wait_until(lambda: not pending_ids(client, stream), timeout=30)
            worker.signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0, worker.stderr()[-3000:]
            break
    else:
        raise AssertionError(f"the poison was never dead-lettered; worker exits: {crashes}")

    # The poison killed its process on each of its max_retries + 1 = 4 runs, no more
    assert crashes == [1, 1, 1, 1]
    assert attempts(client, stream) == 4
    dead = dead_letters(client, stream)
    assert len(dead) == 1
    assert dead[0]["flowd:reason"] == "max_retries=3 used up"
    assert dead[0]["flowd:deliveries"] == "5"
    assert done(client, stream) == set(range(1, 34))
    assert len(more) == 30
    # And no run record is left behind
    assert not client.exists(derived_key(stream, f"runs:{GROUP}"))


def test_processes_restart_a_child_whose_job_exits_2(
    client: redis.Redis, redis_url: str, stream: str, tmp_path: Path
) -> None:
    # Given 300 normal jobs and, among them, a poison that calls os._exit(2)
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    enqueue(client, stream, range(1, 151))
    poison = enqueue(client, stream, range(POISON, POISON + 1))
    enqueue(client, stream, range(151, 301))
    env = app_env(
        redis_url,
        stream,
        FLOWD_TEST_POISON=str(POISON),
        FLOWD_TEST_POISON_EXIT="2",
        FLOWD_TEST_MIN_IDLE="0.5",
        FLOWD_TEST_MAX_RETRIES="1",
        # One thread each: no normal job runs beside the poison in a claimed run.
        FLOWD_TEST_CONCURRENCY="1",
    )
    args = ["worker", TARGET, "--processes", "3", "--shutdown-timeout", "10"]
    with flowd_process(args, env, tmp_path) as supervisor:
        # When three worker processes run them
        def settled() -> Any:
            if supervisor.proc.poll() is not None:
                return True
            return dead_letters(client, stream) and len(done(client, stream)) == 300

        wait_until(settled, timeout=90, message="the jobs were not settled")

        # Then the supervisor took each exit 2 for a crash: it restarted the child and
        # kept the fleet running until every normal job was done
        assert supervisor.proc.poll() is None, supervisor.stderr()[-3000:]
        assert "exited with 2; restarting" in supervisor.stderr()
        assert done(client, stream) == set(range(1, 301))
        dead = dead_letters(client, stream)
        assert [entry["flowd:id"] for entry in dead] == poison
        assert attempts(client, stream) == 2  # max_retries + 1 runs
        wait_until(lambda: not pending_ids(client, stream), timeout=30)

        # And it still stops cleanly on SIGTERM, sent once every child runs its queue (one
        # still starting up, or waiting to restart, would die of the signal)
        def all_children_run() -> bool:
            log = supervisor.stderr()
            starts = log.count("started worker process")
            return starts == 3 + log.count("restarting in") == queues_started(supervisor, stream)

        wait_until(all_children_run, timeout=30)
        supervisor.signal(signal.SIGTERM)
        try:
            status = supervisor.wait(timeout=40)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(supervisor.stderr()[-3000:]) from exc
        assert status == 0, supervisor.stderr()[-3000:]
