"""Queues whose streams share a hash tag (``{shop}:emails``, ``{shop}:orders``) share a
cluster slot but no key: delayed jobs, unique keys, schedules and dead letters stay with
their own stream (issue 21, case 1)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
import redis

import flowd
from tests.helpers import GROUP, Recorder, as_str, numbered_queue, wait_until


@dataclass
class Welcome(flowd.Job):
    user: int


@dataclass
class DeleteAccount(flowd.Job):
    user: int


@pytest.fixture
def shop() -> str:
    return "{shop-" + uuid.uuid4().hex[:8] + "}"


def test_delayed_jobs_run_on_their_own_stream(client: redis.Redis, shop: str) -> None:
    emails, orders = f"{shop}:emails", f"{shop}:orders"
    welcomed, deleted = Recorder(), Recorder()
    handles = [
        numbered_queue(client, emails, welcomed, job=Welcome).run(),
        numbered_queue(client, orders, deleted, job=DeleteAccount).run(),
    ]
    try:
        for user in range(20):
            flowd.Producer(client, emails).enqueue(Welcome(user), delay=0.2)
            flowd.Producer(client, orders).enqueue(DeleteAccount(100 + user), delay=0.2)
        wait_until(lambda: welcomed.count == 20 and deleted.count == 20, timeout=20)
    finally:
        for handle in handles:
            assert handle.stop(timeout=5)
    # Same fields, so a job moved into the wrong stream would decode and run there.
    assert sorted(t.user for t in welcomed.done.values()) == list(range(20))
    assert sorted(t.user for t in deleted.done.values()) == list(range(100, 120))
    assert client.xlen(emails) == client.xlen(orders) == 20


def test_unique_keys_are_per_stream(client: redis.Redis, shop: str) -> None:
    emails, orders = f"{shop}:emails", f"{shop}:orders"
    email_id = flowd.Producer(client, emails).enqueue(Welcome(7), unique_key="cust:7")
    order_id = flowd.Producer(client, orders).enqueue(DeleteAccount(7), unique_key="cust:7")
    # Both were enqueued (ids may coincide: each stream numbers its own entries).
    assert [as_str(i) for i, _ in client.xrange(emails)] == [email_id]
    assert [as_str(i) for i, _ in client.xrange(orders)] == [order_id]


def test_dead_letters_and_scheduled_sets_are_per_stream(client: redis.Redis, shop: str) -> None:
    emails, orders = f"{shop}:emails", f"{shop}:orders"
    flowd.Producer(client, emails).enqueue(Welcome(1), delay=3600)
    flowd.Producer(client, orders).enqueue(DeleteAccount(2), delay=3600)
    assert flowd.ScheduledJobs(client, emails).count() == 1
    assert flowd.ScheduledJobs(client, orders).count() == 1

    def give_up(task: flowd.Task[DeleteAccount]) -> None:
        raise flowd.GiveUp("no such account")

    flowd.Producer(client, orders).enqueue(DeleteAccount(3))
    handle = numbered_queue(client, orders, give_up, job=DeleteAccount).run()
    try:
        wait_until(lambda: client.xlen(f"{orders}:dead") == 1, timeout=10)
    finally:
        assert handle.stop(timeout=5)
    assert not client.exists(f"{emails}:dead", f"{shop}:dead")
    [(_, fields)] = client.xrange(f"{orders}:dead")
    assert as_str(fields[b"flowd:stream"]) == orders


def test_periodic_schedules_with_one_name_keep_their_own_state(
    client: redis.Redis, shop: str
) -> None:
    emails, orders = f"{shop}:emails", f"{shop}:orders"
    welcomed, deleted = Recorder(), Recorder()
    handles = [
        numbered_queue(
            client,
            emails,
            welcomed,
            job=Welcome,
            schedules=[flowd.Schedule("nightly", Welcome(1), every=1)],
        ).run(),
        numbered_queue(
            client,
            orders,
            deleted,
            job=DeleteAccount,
            schedules=[flowd.Schedule("nightly", DeleteAccount(2), every=1)],
        ).run(),
    ]
    try:
        # Sharing one state, the two schedules fired about 4 times between them.
        wait_until(lambda: welcomed.count >= 3 and deleted.count >= 3, timeout=15)
    finally:
        for handle in handles:
            assert handle.stop(timeout=5)
    assert {s.name for s in flowd.ScheduledJobs(client, emails).schedule_states()} == {"nightly"}
    assert {s.name for s in flowd.ScheduledJobs(client, orders).schedule_states()} == {"nightly"}
    # One state per stream, not one per tag.
    assert (
        client.hkeys(f"{emails}:schedules") == client.hkeys(f"{orders}:schedules") == [b"nightly"]
    )
    assert not client.exists(f"{shop}:schedules")


# -- the old layout (before 0.2: one prefix per tag) and `flowd migrate`


def _old_layout(client: redis.Redis, shop: str) -> dict[str, str]:
    """Keys as flowd before 0.2 wrote them for {shop}:emails and {shop}:orders."""
    emails, orders = f"{shop}:emails", f"{shop}:orders"
    for stream in (emails, orders):
        client.xgroup_create(stream, GROUP, "0", mkstream=True)
    email_id = as_str(client.xadd(emails, {"user": "1"}, id="1-1"))
    order_id = as_str(client.xadd(orders, {"user": "2"}, id="1-2"))
    for stream, user in ((emails, "3"), (orders, "4")):
        client.xadd(f"{shop}:dead", {"user": user, "flowd:stream": stream, "flowd:reason": "x"})
    client.hset(f"{shop}:errors:{GROUP}", mapping={email_id: "email failed", order_id: "no"})
    client.set(f"{shop}:unique:cust:7", email_id)
    client.set(f"{shop}:unique:cust:8", order_id)
    client.zadd(f"{shop}:scheduled", {"s-0001-aa": 4102444800000})  # due in 2100
    client.hset(f"{shop}:scheduled:s-0001-aa", mapping={"user": "5"})
    client.hset(f"{shop}:schedules", "nightly", "{}")
    return {"email_id": email_id, "order_id": order_id}


def test_migrate_splits_the_shared_keys_by_owner(client: redis.Redis, shop: str) -> None:
    emails, orders = f"{shop}:emails", f"{shop}:orders"
    ids = _old_layout(client, shop)

    dry = flowd.migrate_keys(client, [emails, orders], dry_run=True)
    assert dry[0].moved["dead letters"] == dry[1].moved["dead letters"] == 1
    assert client.xlen(f"{shop}:dead") == 2  # a dry run moves nothing

    first = flowd.migrate_keys(client, [emails, orders])
    # Several streams share the tag: the delayed jobs wait for --scheduled-to.
    assert all(r.left for r in first)
    assert client.zcard(f"{shop}:scheduled") == 1
    for stream, user, msg_id, key in (
        (emails, b"3", ids["email_id"], "cust:7"),
        (orders, b"4", ids["order_id"], "cust:8"),
    ):
        [(_, fields)] = client.xrange(f"{stream}:dead")
        assert fields[b"user"] == user
        assert client.hkeys(f"{stream}:errors:{GROUP}") == [msg_id.encode()]
        assert as_str(client.get(f"{stream}:unique:{key}")) == msg_id
    assert not client.exists(f"{shop}:dead", f"{shop}:errors:{GROUP}", f"{shop}:unique:cust:7")

    second = flowd.migrate_keys(client, [emails, orders], scheduled_to=emails)
    assert second[0].moved == {"scheduled jobs": 1, "schedules": 1}
    assert second[1].total == 0 and not second[1].left
    assert flowd.ScheduledJobs(client, emails).count() == 1
    assert client.hgetall(f"{emails}:scheduled:s-0001-aa") == {b"user": b"5"}
    assert [s.name for s in flowd.ScheduledJobs(client, emails).schedule_states()] == ["nightly"]

    again = flowd.migrate_keys(client, [emails, orders], scheduled_to=emails)
    assert [r.total for r in again] == [0, 0]  # a second run changes nothing


def test_a_queue_warns_of_keys_left_in_the_old_layout(
    client: redis.Redis, shop: str, caplog: pytest.LogCaptureFixture
) -> None:
    emails = f"{shop}:emails"
    _old_layout(client, shop)
    queue = numbered_queue(client, emails, print, job=Welcome)
    with caplog.at_level("WARNING", logger="flowd"):
        handle = queue.run()
        assert handle.stop(timeout=5)
    assert any("flowd migrate" in r.getMessage() for r in caplog.records)


def test_flowd_migrate_command(
    client: redis.Redis, redis_url: str, shop: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from flowd.cli.parser import main

    emails, orders = f"{shop}:emails", f"{shop}:orders"
    _old_layout(client, shop)
    assert main(["migrate", emails, orders, "--url", redis_url]) == 1  # the delayed jobs left
    assert "--scheduled-to" in capsys.readouterr().out
    assert main(["migrate", emails, orders, "--scheduled-to", orders, "--url", redis_url]) == 0
    assert "moved 1 scheduled jobs, 1 schedules" in capsys.readouterr().out
    assert flowd.ScheduledJobs(client, orders).count() == 1
