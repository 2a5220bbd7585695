"""Worker processes SIGKILLed at random moments while three of them consume 20,000 jobs."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import flowd
from tests.faults.accounting import (
    GROUP,
    Item,
    assert_exact,
    done_jobs,
    key,
    report,
    take_account,
    text,
    wait_settled,
)
from tests.faults.workers import WorkerProcess
from tests.helpers import running_server, wait_until
from tests.redis_server import RedisServer

JOBS = 20_000
PROCESSES = 3
KILLS = 6


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with running_server(appendonly=True) as server:
        yield server


def consumer_pending(client: redis.Redis, stream: str, consumer: str) -> set[str]:
    try:
        rows: Any = client.xpending_range(stream, GROUP, "-", "+", 100_000, consumername=consumer)
    except redis.exceptions.ResponseError:  # no group yet: no worker got that far
        return set()
    return {text(row["message_id"]) for row in rows}


#: Retry control on top: a backoff, and jobs that ask for a retry on their first delivery.
RETRIES = {"plain": {}, "backoff": {"FAULTS_BACKOFF": "0.2", "FAULTS_FLAKY": "1"}}


@pytest.mark.parametrize("retries", sorted(RETRIES))
def test_sigkilled_worker_processes_lose_no_job(
    server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], retries: str
) -> None:
    seed = int(os.environ.get("FAULTS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    client = redis.Redis.from_url(server.url)
    stream = "kills"
    # Given 20,000 jobs (each takes ~3 ms) and three worker processes, each its own consumer
    ids = flowd.Producer(client, stream).enqueue_bulk(Item(n) for n in range(JOBS))
    by_id = dict(zip(ids, range(JOBS), strict=True))
    workers: list[WorkerProcess] = []
    retired: list[WorkerProcess] = []  # killed ones, for their logs
    killed: list[str] = []  # consumers that were SIGKILLed
    at_risk = 0  # messages pending in a consumer at the moment it was killed
    exits: list[int | None] = []
    settled_in: float | None = None

    def start(index: int, generation: int) -> WorkerProcess:
        return WorkerProcess(
            server.url,
            stream,
            f"w{index}g{generation}",
            tmp_path,
            FAULTS_SLEEP="0.003",
            **RETRIES[retries],
        )

    try:
        workers = [start(i, 0) for i in range(PROCESSES)]
        wait_until(lambda: len(done_jobs(client, stream)) >= 500, timeout=30, interval=0.05)
        # When a random one is SIGKILLed every 0.5-1.5 s, and restarted, six times
        generation = 0
        while len(killed) < KILLS:
            time.sleep(rng.uniform(0.5, 1.5))
            if len(done_jobs(client, stream)) >= JOBS:
                break
            index = rng.randrange(PROCESSES)
            victim = workers[index]
            victim.kill()
            retired.append(victim)
            killed.append(victim.consumer)
            at_risk += len(consumer_pending(client, stream, victim.consumer))
            generation += 1
            workers[index] = start(index, generation)
        progress_at_last_kill = len(done_jobs(client, stream))
        # Then the survivors reclaim what the killed ones held, and everything settles
        settled_in = wait_settled(client, stream, set(range(JOBS)), timeout=60)
        exits = [worker.terminate(timeout=20) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    account = take_account(client, stream, f"SIGKILL workers, {retries}", by_id)
    runs = {text(k): int(v) for k, v in client.hgetall(key(stream, "runs")).items()}
    ran_by_killed: dict[str, int] = {}
    for consumer in killed:
        for msg_id in client.smembers(key(stream, f"ran:{consumer}")):
            ran_by_killed[text(msg_id)] = ran_by_killed.get(text(msg_id), 0) + 1
    # A message may run once more for each killed consumer that ran it (and died before
    # its ack was written), and not otherwise.
    unexplained = sorted(
        msg_id for msg_id, count in runs.items() if count - 1 > ran_by_killed.get(msg_id, 0)
    )
    account.extra.update(
        kills=len(killed),
        at_risk=at_risk,
        unexplained=len(unexplained),
        done_at_last_kill=progress_at_last_kill,
        seed=seed,
        settled_in=None if settled_in is None else round(settled_in, 1),
    )
    report(capsys, account)
    client.close()
    unexpected = [
        f"{worker.consumer}: {line}"
        for worker in retired + workers
        for line in worker.stderr().splitlines()
        if "unexpected error" in line or "Traceback" in line
    ]

    assert_exact(account)
    assert account.unknown_runs == []
    assert unexplained == [], f"reruns without a killed consumer behind them: {unexplained[:10]}"
    assert account.duplicates <= at_risk
    assert len(killed) >= 3, f"only {len(killed)} kills happened before the jobs were done"
    assert exits == [0] * PROCESSES, f"exit statuses after SIGTERM: {exits}"
    assert unexpected == [], unexpected[:10]
    if retries == "backoff":
        # The retries did happen (and, per the account above, lost nothing)
        asked = sum(worker.stderr().count("asked for a retry") for worker in retired + workers)
        assert asked >= 400, f"only {asked} retries were asked for"
