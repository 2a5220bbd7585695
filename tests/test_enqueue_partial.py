"""A bulk enqueue that Redis takes only in part says which jobs it wrote (issue 21, case 7).

Redis runs out of memory (``maxmemory`` with ``noeviction``) part-way through a
bulk: EnqueueError names the ids written (exactly those in Redis, in input
order) and the jobs not written, so sending those again adds each job once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import redis

import flowd
from flowd._redis import scheduling as sched
from tests.faults.proxy import CutMode, Proxy
from tests.helpers import as_str
from tests.redis_server import RedisServer

TOTAL = 1000
FILLER = 4 * 1024 * 1024  # bytes of the key whose deletion frees memory again
HEADROOM = 256 * 1024  # room left under maxmemory: a few hundred of the jobs fit


@dataclass
class Blob(flowd.Job):
    n: int
    payload: str


def _jobs() -> list[Blob]:
    return [Blob(n=n, payload="x" * 1000) for n in range(TOTAL)]


def _fill_memory(oom_admin: redis.Redis) -> None:
    """Fill memory up to HEADROOM below maxmemory (noeviction: further writes are refused)."""
    # SETRANGE grows the filler inside Redis: a 4 MB SET would leave a 4 MB query
    # buffer that Redis frees a moment later, after used_memory was read, and the
    # whole bulk would then fit (CI saw this on Redis 6.2).
    oom_admin.setrange("filler", FILLER - 1, b"f")
    used = int(oom_admin.info("memory")["used_memory"])
    oom_admin.config_set("maxmemory-policy", "noeviction")
    oom_admin.config_set("maxmemory", used + HEADROOM)


def _free_memory(oom_admin: redis.Redis) -> None:
    oom_admin.delete("filler")


def _ids_by_n(oom_admin: redis.Redis, streams: list[str]) -> dict[int, list[str]]:
    """Every stream entry's id, by its job's n (a job in twice has two ids)."""
    found: dict[int, list[str]] = {}
    for stream in streams:
        entries: Any = oom_admin.xrange(stream)
        for msg_id, fields in entries:
            found.setdefault(int(fields[b"n"]), []).append(as_str(msg_id))
    return found


def _scheduled_by_n(oom_admin: redis.Redis, stream: str) -> dict[int, list[str]]:
    """Every scheduled job's id, by its job's n."""
    found: dict[int, list[str]] = {}
    for member in oom_admin.zrange(sched.scheduled_key(stream), 0, -1):
        job_id = as_str(member)
        n = oom_admin.hget(sched.job_key(stream, job_id), "n")
        assert n is not None, f"scheduled job {job_id} has no hash"
        found.setdefault(int(n), []).append(job_id)
    return found


def _check_account(error: flowd.EnqueueError, in_redis: dict[int, list[str]]) -> None:
    """The error's account matches what Redis holds, job by job."""
    assert all(len(ids) == 1 for ids in in_redis.values()), "a job was written twice"
    assert error.unknown == []
    # Then enqueued is exactly the ids in Redis, in input order
    assert error.enqueued == [in_redis[n][0] for n in sorted(in_redis)]
    # and failed is exactly the jobs not in Redis
    assert error.failed == sorted(set(range(TOTAL)) - set(in_redis))
    assert 0 < len(error.enqueued) < TOTAL, "the bulk should fail part-way"
    assert isinstance(error.cause, redis.exceptions.ResponseError)
    assert "maxmemory" in str(error.cause)
    assert error.__cause__ is error.cause
    assert f"wrote {len(error.enqueued)} jobs; {len(error.failed)} were not written" in str(error)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"chunk_size": 100},
        {"chunk_size": 100, "partitions": 2},
        # A lone server has no replica: WAIT says too few, but refused jobs come first
        # (one chunk: a whole chunk written would raise ReplicationError).
        {"replicas": 1, "replica_timeout": 0.01},
    ],
    ids=["one-pipeline", "chunks", "partitions", "durable"],
)
def test_oom_part_way_names_the_jobs_written_and_retrying_the_failed_adds_each_once(
    oom_admin: redis.Redis, options: dict[str, Any]
) -> None:
    # Given a producer, and a Redis with room for only some of 1,000 jobs
    producer = flowd.Producer(oom_admin, "jobs", **options)
    jobs = _jobs()
    _fill_memory(oom_admin)
    # When the bulk enqueue runs out of memory part-way
    with pytest.raises(flowd.EnqueueError) as info:
        producer.enqueue_bulk(jobs)
    err = info.value
    # Then its account matches the streams entry for entry
    _check_account(err, _ids_by_n(oom_admin, producer.streams))
    assert isinstance(err, flowd.FlowdError)
    # When memory is freed and only the failed jobs are sent again
    _free_memory(oom_admin)
    # (without replicas: this server has none, and the point is what gets written)
    plain = {k: v for k, v in options.items() if "replica" not in k}
    retry = flowd.Producer(oom_admin, "jobs", **plain)
    again = retry.enqueue_bulk([jobs[i] for i in err.failed])
    # Then every job is in the streams exactly once, and the ids returned are theirs
    in_redis = _ids_by_n(oom_admin, producer.streams)
    assert Counter({n: len(ids) for n, ids in in_redis.items()}) == Counter(
        {n: 1 for n in range(TOTAL)}
    )
    assert sorted(err.enqueued + again) == sorted(ids[0] for ids in in_redis.values())


def test_oom_part_way_through_a_scheduled_bulk_names_the_jobs_scheduled(
    oom_admin: redis.Redis,
) -> None:
    # Given a Redis with room for only some of 1,000 delayed jobs
    producer = flowd.Producer(oom_admin, "later", chunk_size=250)
    jobs = _jobs()
    _fill_memory(oom_admin)
    # When the scheduled bulk runs out of memory part-way
    with pytest.raises(flowd.EnqueueError) as info:
        producer.enqueue_bulk(jobs, delay=3600)
    err = info.value
    # Then its account matches the scheduled set job for job (a script refused for
    # OOM wrote nothing, so no job is half-scheduled)
    _check_account(err, _scheduled_by_n(oom_admin, "later"))
    # When memory is freed and only the failed jobs are sent again
    _free_memory(oom_admin)
    producer.enqueue_bulk([jobs[i] for i in err.failed], delay=3600)
    # Then every job is scheduled exactly once
    in_redis = _scheduled_by_n(oom_admin, "later")
    assert sorted(in_redis) == list(range(TOTAL))
    assert all(len(ids) == 1 for ids in in_redis.values())


def test_a_bulk_refused_from_its_first_job_has_no_ids(oom_admin: redis.Redis) -> None:
    # Given a Redis already over its memory limit
    oom_admin.set("filler", b"f" * FILLER)
    oom_admin.config_set("maxmemory-policy", "noeviction")
    oom_admin.config_set("maxmemory", 1)
    try:
        # When a bulk is sent in chunks
        with pytest.raises(flowd.EnqueueError) as info:
            flowd.Producer(oom_admin, "full", chunk_size=100).enqueue_bulk(_jobs())
    finally:
        oom_admin.config_set("maxmemory", 0)
    # Then nothing was written, and every job (sent or not) is reported failed
    assert info.value.enqueued == [] and info.value.unknown == []
    assert info.value.failed == list(range(TOTAL))
    assert oom_admin.exists("full") == 0
    assert str(info.value).startswith("enqueue_bulk wrote 0 jobs; 1000 were not written")


@pytest.mark.parametrize("mode", ["command", "reply"])
def test_a_connection_cut_mid_bulk_makes_its_chunk_unknown(
    oom_server: RedisServer, oom_admin: redis.Redis, mode: CutMode
) -> None:
    # Given a producer without client retries, talking through a proxy that cuts
    # the connection at job 550 (in the sixth chunk of 100)
    with Proxy(("127.0.0.1", oom_server.port)) as proxy:
        client = redis.Redis(host="127.0.0.1", port=proxy.port, retry=None)
        try:
            rule = proxy.cut_when(b"$1\r\nn\r\n$3\r\n550\r\n", mode=mode)
            # When the bulk runs
            with pytest.raises(flowd.EnqueueError) as info:
                flowd.Producer(client, "cut", chunk_size=100).enqueue_bulk(_jobs())
        finally:
            client.close()
        assert rule.done
    err = info.value
    in_redis = _ids_by_n(oom_admin, ["cut"])
    # Then the chunks before the cut are enqueued, exactly as in the stream
    assert err.enqueued == [in_redis[n][0] for n in range(500)]
    # the cut chunk is unknown (some of it may be in the stream: "reply" ran job 550)
    assert err.unknown == list(range(500, 600))
    assert set(in_redis) - set(range(500)) <= set(range(500, 600))
    if mode == "reply":
        assert 550 in in_redis
    # and the chunks after it were never sent: failed, and not in the stream
    assert err.failed == list(range(600, TOTAL))
    assert isinstance(err.cause, redis.exceptions.ConnectionError)
    assert "400 were not written (see .failed) and 100 may or may not have been" in str(err)
