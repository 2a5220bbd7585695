"""Redis itself fails under a running queue: SIGKILLed and restarted from its AOF, or gone
for 10 s. The queue must go on by itself, lose nothing and leave nothing pending."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from tests.faults.accounting import FaultWindows, Item, assert_exact, records_by_thread, report
from tests.faults.scenario import Outcome, RecordingQueue, assert_scenario
from tests.redis_server import RedisServer


def test_redis_sigkilled_and_restarted_twice_loses_no_job(
    aof_server: RedisServer, scenario: Callable[..., Outcome], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 5,000 jobs, a queue with a claimer, and a producer adding 1,000 more meanwhile
    def kill_and_restart(windows: FaultWindows, queue: RecordingQueue) -> None:
        with windows.fault("SIGKILL redis-server, restart from its AOF"):
            aof_server.stop(kill=True)
            aof_server.start()

    # When redis-server is SIGKILLed and restarted at 30% and at 60% of the backlog
    outcome = scenario(
        "redis SIGKILL x2",
        stream="restarts",
        backlog=[Item(n) for n in range(5000)],
        trickle=[Item(n) for n in range(5000, 6000)],
        faults=[(1500, kill_and_restart), (3000, kill_and_restart)],
    )
    report(capsys, outcome.account)

    # Then every job succeeded, nothing is pending, and every rerun is explained by a kill
    assert_scenario(outcome)
    assert_exact(outcome.account)
    assert outcome.account.enqueued == 6000


def test_redis_unreachable_for_10s_then_back_resumes_with_one_warning_per_thread(
    aof_server: RedisServer,
    scenario: Callable[..., Outcome],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowd")
    moments: dict[str, float] = {}

    def outage(windows: FaultWindows, queue: RecordingQueue) -> None:
        # while a long job runs: the lease thread has a message to renew as Redis goes
        assert queue.long_job_started.wait(30), "the long job never started"
        time.sleep(0.3)
        with windows.fault("redis-server stopped for 10 s"):
            moments["down"] = time.time()
            aof_server.stop()
            time.sleep(10.0)
            # Redis is back from the moment it listens, which is before start() has
            # seen its own PING answered: a flowd thread may reconnect in between
            moments["up"] = time.time()
            aof_server.start()

    # Given 3,000 jobs of which job 1000 takes 1.5 s, and a producer adding 1,000 more
    backlog = [Item(n, sleep=1.5 if n == 1000 else 0.0) for n in range(3000)]
    # When redis-server is stopped for 10 s while job 1000 runs, then started again
    outcome = scenario(
        "redis down 10s",
        stream="outage",
        backlog=backlog,
        trickle=[Item(n) for n in range(3000, 4000)],
        faults=[(0, outage)],
    )
    unavailable = records_by_thread(caplog.records, "Redis unavailable", moments["down"])
    back = records_by_thread(caplog.records, "Redis reachable again", moments["down"])
    early_back = records_by_thread(
        (r for r in caplog.records if r.created < moments["up"]),
        "Redis reachable again",
        moments["down"],
    )
    outcome.account.extra.update(unavailable_warnings=dict(unavailable), reachable_again=dict(back))
    report(capsys, outcome.account)

    # Then the queue resumed by itself and the account is exact
    assert_scenario(outcome)
    assert_exact(outcome.account)
    # And no job ran twice: acks still queued when Redis came back were written, and the
    # claimer did not take back the ids this process still held
    assert outcome.account.duplicates == 0, outcome.account
    # And each flowd thread said "unavailable" at most once for the outage, and
    # "reachable again" only once Redis was back
    assert unavailable, "no flowd thread reported the outage"
    assert all(count == 1 for count in unavailable.values()), dict(unavailable)
    assert not early_back, f"'reachable again' logged while Redis was down: {dict(early_back)}"
    assert set(back) == set(unavailable), (dict(unavailable), dict(back))
