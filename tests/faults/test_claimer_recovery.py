"""A consumer died holding many messages: the claimer must recover them promptly, not one
batch of ``concurrency`` messages per claimer interval."""

from __future__ import annotations

import pytest
import redis

import flowd
from tests.faults.accounting import GROUP, Item, assert_exact, report, take_account, wait_settled
from tests.faults.scenario import RECOVERY_BOUND, RecordingQueue
from tests.redis_server import RedisServer

JOBS = 2000


def test_dead_consumers_2000_pending_messages_are_recovered_within_the_bound(
    aof_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(aof_server.url)
    stream = "orphans"
    # Given 2,000 messages read by a consumer that then died without acking any
    ids = flowd.Producer(client, stream).enqueue_bulk(Item(n) for n in range(JOBS))
    client.xgroup_create(stream, GROUP, "0")
    client.xreadgroup(GROUP, "crashed", {stream: ">"}, count=JOBS)
    # When a queue with a claimer (min_idle_time 1 s, concurrency 8) runs
    recording = RecordingQueue(aof_server.url, stream, min_idle=1.0)
    handle = recording.queue.run()
    try:
        settled_in = wait_settled(client, stream, set(range(JOBS)), timeout=RECOVERY_BOUND)
    finally:
        clean = handle.stop(timeout=10)
        recording.close()
    account = take_account(
        client, stream, "dead consumer's PEL", dict(zip(ids, range(JOBS), strict=True))
    )
    account.extra.update(
        settled_in=None if settled_in is None else round(settled_in, 1),
        redeliveries=sum(1 for run in recording.ledger.runs if run.deliveries > 1),
    )
    report(capsys, account)
    client.close()

    # Then every message was reclaimed and ran once, well within the bound
    # (about 2 s of work; a claimer that stops after each batch needs
    # JOBS / concurrency intervals: 250 x 0.25 s here, 250 x 5 s with the default 30 s)
    assert settled_in is not None, f"not recovered within {RECOVERY_BOUND}s: {account.line()}"
    assert_exact(account)
    assert account.duplicates == 0
    assert clean
