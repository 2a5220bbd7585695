"""Redis answering errors for a while: OOM (maxmemory 1, noeviction), then READONLY (the
queue's connections land on a read-only replica). flowd must treat both as transient:
retry with backoff, one WARNING per thread, and an exact account."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis

from tests.faults.accounting import (
    FaultWindows,
    Item,
    assert_exact,
    records_by_thread,
    report,
)
from tests.faults.backend_proxy import BackendProxy
from tests.faults.scenario import Outcome, RecordingQueue, assert_scenario, run_scenario
from tests.helpers import wait_until
from tests.redis_server import RedisServer


def flowd_errors(caplog: pytest.LogCaptureFixture, since: float) -> list[str]:
    """ERROR records of flowd's own threads (not of failed jobs) since ``since``."""
    return [
        f"{r.threadName}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("flowd")
        and r.levelno >= logging.ERROR
        and r.created >= since
        and not r.getMessage().startswith("job ")
    ]


def note_logs(
    outcome: Outcome, caplog: pytest.LogCaptureFixture, since: float, reply: str
) -> tuple[Counter[str], Counter[str]]:
    """Per flowd thread: "Redis unavailable" warnings, and records quoting ``reply``."""
    unavailable = records_by_thread(caplog.records, "Redis unavailable", since)
    quoting = records_by_thread(caplog.records, reply, since)
    outcome.account.extra.update(
        unavailable_warnings=dict(unavailable),
        threads_seeing_reply=sorted(quoting),
        errors_logged=len(flowd_errors(caplog, since)),
    )
    return unavailable, quoting


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """flowd's warnings, and its threads' debug records ("still unavailable: <reply>")."""
    caplog.set_level(logging.WARNING, logger="flowd")
    caplog.set_level(logging.DEBUG, logger="flowd._consumer.threads")
    return caplog


def test_oom_replies_for_3s_are_transient_and_lose_no_job(
    admin: redis.Redis,
    scenario: Callable[..., Outcome],
    capsys: pytest.CaptureFixture[str],
    logs: pytest.LogCaptureFixture,
) -> None:
    moments: dict[str, float] = {}

    def out_of_memory(windows: FaultWindows, queue: RecordingQueue) -> None:
        with windows.fault("maxmemory 1 (noeviction) for 3 s"):
            moments["since"] = time.time()
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
            time.sleep(3.0)
            admin.config_set("maxmemory", 0)

    # Given 4,000 jobs, a queue with a claimer and a producer adding 1,000 more
    # When the server answers OOM to every allocating write for 3 s mid-run
    outcome = scenario(
        "OOM 3s",
        stream="oom",
        backlog=[Item(n) for n in range(4000)],
        trickle=[Item(n) for n in range(4000, 5000)],
        faults=[(1500, out_of_memory)],
        # The reader keeps reading during OOM (XREADGROUP does not allocate), so hundreds
        # of jobs fail and wait for the claimer, which takes one batch per interval (see
        # test_claimer_recovery): 5-15 s here instead of ~1 s; a wider bound until fixed.
        settle_timeout=45.0,
    )
    unavailable, quoting = note_logs(outcome, logs, moments["since"], "maxmemory")
    report(capsys, outcome.account)

    # Then nothing is lost or left pending, and reruns are explained by the OOM window
    assert_scenario(outcome)
    assert_exact(outcome.account)
    assert outcome.producer.errors["OutOfMemoryError"], "the producer never saw OOM"
    assert outcome.account.extra["failed_runs"], "no job saw OOM"
    # And flowd's threads treated OOM as transient: a WARNING, not an "unexpected error"
    assert quoting, "no flowd thread met the OOM replies"
    assert flowd_errors(logs, moments["since"]) == []
    assert all(count <= 1 for count in unavailable.values()), dict(unavailable)


def test_readonly_replies_for_3s_are_transient_and_lose_no_job(
    aof_server: RedisServer,
    admin: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    logs: pytest.LogCaptureFixture,
) -> None:
    moments: dict[str, float] = {}
    # Given a read-only replica of the queue's server, and a proxy in front of the server
    replica = RedisServer(
        extra_args=("--replicaof", "127.0.0.1", str(aof_server.port), "--replica-read-only", "yes")
    )
    replica.start()
    proxy = BackendProxy(aof_server.port).start()
    try:
        replica_client = redis.Redis.from_url(replica.url)
        wait_until(
            lambda: replica_client.info("replication").get("master_link_status") == "up",
            timeout=20,
            message="replica in sync",
        )
        replica_client.close()

        def failover_to_replica(windows: FaultWindows, queue: RecordingQueue) -> None:
            with windows.fault("connections moved to a read-only replica for 3 s"):
                moments["since"] = time.time()
                proxy.switch(replica.port)
                time.sleep(3.0)
                proxy.switch(aof_server.port)

        # When, mid-run, every connection is cut and lands on the replica for 3 s
        outcome = run_scenario(
            "READONLY 3s",
            url=proxy.url,
            admin=admin,
            stream="readonly",
            backlog=[Item(n) for n in range(4000)],
            trickle=[Item(n) for n in range(4000, 5000)],
            faults=[(1500, failover_to_replica)],
        )
    finally:
        proxy.close()
        replica.close()
    unavailable, quoting = note_logs(outcome, logs, moments["since"], "read only replica")
    report(capsys, outcome.account)

    # Then nothing is lost or left pending, and reruns are explained by the failover
    assert_scenario(outcome)
    assert_exact(outcome.account)
    assert outcome.producer.errors["ReadOnlyError"], "the producer never saw READONLY"
    # And flowd's threads treated READONLY as transient: a WARNING, not an "unexpected error"
    assert quoting, "no flowd thread met the READONLY replies"
    assert flowd_errors(logs, moments["since"]) == []
    assert all(count <= 1 for count in unavailable.values()), dict(unavailable)
