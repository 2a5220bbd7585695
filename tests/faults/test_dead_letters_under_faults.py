"""The dead-letter path under a Redis kill: always-failing jobs (max_retries=1) end in the
dead-letter stream exactly once each, with a reason, while redis-server is SIGKILLed and
restarted from its AOF."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from tests.faults.accounting import (
    FaultWindows,
    Item,
    assert_exact,
    dead_ids,
    dead_stream,
    key,
    report,
)
from tests.faults.scenario import Outcome, RecordingQueue, assert_scenario
from tests.helpers import wait_until
from tests.redis_server import RedisServer

MAX_RETRIES = 1


def test_failing_jobs_are_dead_lettered_exactly_once_across_a_redis_kill(
    aof_server: RedisServer,
    admin: redis.Redis,
    scenario: Callable[..., Outcome],
    capsys: pytest.CaptureFixture[str],
) -> None:

    def kill_and_restart(windows: FaultWindows, queue: RecordingQueue) -> None:
        # mid-way through the dead-lettering: a third of the failing jobs are dead
        wait_until(lambda: admin.xlen(dead_stream("dlq")) >= 100, timeout=30, interval=0.01)
        with windows.fault("SIGKILL redis-server, restart from its AOF"):
            aof_server.stop(kill=True)
            aof_server.start()

    # Given 3,000 jobs of which every tenth always fails, and max_retries=1
    backlog = [Item(n, fail=n % 10 == 0, sleep=0.002) for n in range(3000)]
    # When redis-server is SIGKILLed and restarted while failures are being retried
    outcome = scenario(
        "DLQ + redis SIGKILL",
        stream="dlq",
        backlog=backlog,
        trickle=[Item(n) for n in range(3000, 3500)],
        faults=[(0, kill_and_restart)],
        queue_options={"min_idle": 0.5, "max_retries": MAX_RETRIES},
    )
    ledger = outcome.queue.ledger
    runs = ledger.by_message()
    too_many_runs = {
        msg_id: len(runs[msg_id])
        for msg_id in outcome.failing
        if len(runs.get(msg_id, [])) > MAX_RETRIES + 1
    }
    never_told = sorted(outcome.failing - set(ledger.dlq_calls))
    leftover_errors = admin.hlen(key("dlq", "errors:g"))
    dead = dead_ids(admin, "dlq")
    outcome.account.extra.update(
        failing=len(outcome.failing),
        dlq_worker_calls=sum(ledger.dlq_calls.values()),
        leftover_error_reasons=leftover_errors,
    )
    report(capsys, outcome.account)

    # Then each failing job is in the dead-letter stream exactly once, with a reason,
    # every other job succeeded, and nothing is pending
    assert_scenario(outcome)
    assert_exact(outcome.account, dead=len(outcome.failing))
    assert sorted(dead) == sorted(outcome.failing)
    # And no failing job ran more than max_retries + 1 times; dlq_worker saw each of them
    assert too_many_runs == {}
    assert never_told == []
    assert leftover_errors == 0, "failure reasons of dead-lettered messages were left behind"
