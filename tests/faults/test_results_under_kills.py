"""Results under SIGKILL: a job is never stored as succeeded without its ack, nor acked
without its result, at any moment, while worker processes are killed at random."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import redis

import flowd
from tests.faults.accounting import GROUP, Item, done_jobs, text, wait_settled
from tests.faults.workers import WorkerProcess
from tests.helpers import wait_until
from tests.redis_server import RedisServer

JOBS = 6_000
PROCESSES = 3
KILLS = 5

# One atomic look at every job (KEYS: stream, group, the buckets of successes' records):
# ARGV[1] is unused, then the ids. Returns the
# ids that break the rule, each as "<id>:<what>".
_SNAPSHOT = """
local stream, group = KEYS[1], KEYS[2]
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local name, delivered
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == group then last = delivered end
end
local lms, lseq = string.match(last, '^(%d+)%-(%d+)$')
lms, lseq = tonumber(lms), tonumber(lseq)
local buckets = redis.call('ZRANGE', KEYS[3], 0, -1)
local bad = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq)
  local delivered = ms < lms or (ms == lms and seq <= lseq)
  local pending = #redis.call('XPENDING', stream, group, id, id, 1) > 0
  local record = false
  for _, bucket in ipairs(buckets) do
    if redis.call('HEXISTS', bucket, id) == 1 then record = true end
  end
  if record and pending then bad[#bad + 1] = id .. ':record while pending' end
  if delivered and not pending and not record then bad[#bad + 1] = id .. ':acked, no record' end
end
return bad
"""


def broken(client: redis.Redis, stream: str, ids: list[str]) -> list[str]:
    """The ids whose record and ack disagree in one atomic snapshot."""
    buckets = flowd._redis.keys.result_buckets_key(stream)
    return [text(b) for b in client.eval(_SNAPSHOT, 3, stream, GROUP, buckets, "", *ids)]


def test_sigkilled_workers_never_split_a_result_from_its_ack(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    seed = int(os.environ.get("FAULTS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    client = redis.Redis.from_url(private_redis.url)
    stream = "results-kills"
    # Given 6,000 jobs that keep results, and three worker processes
    ids = flowd.Producer(client, stream).enqueue_bulk(Item(n) for n in range(JOBS))
    by_id = dict(zip(ids, range(JOBS), strict=True))
    workers: list[WorkerProcess] = []
    snapshots: list[list[str]] = []
    at_risk = 0  # jobs pending in a consumer when it was killed

    def start(index: int, generation: int) -> WorkerProcess:
        return WorkerProcess(
            private_redis.url,
            stream,
            f"w{index}g{generation}",
            tmp_path,
            FAULTS_SLEEP="0.01",
            FAULTS_RESULT_TTL="600",
        )

    try:
        workers = [start(i, 0) for i in range(PROCESSES)]
        wait_until(lambda: len(done_jobs(client, stream)) >= 300, timeout=30, interval=0.05)
        # When a random one is SIGKILLed every 0.3-0.8 s and restarted, and the record and
        # the ack of every job are compared atomically right after each kill
        for generation in range(1, KILLS + 1):
            time.sleep(rng.uniform(0.3, 0.8))
            index = rng.randrange(PROCESSES)
            workers[index].kill()
            held = client.xpending_range(
                stream, GROUP, "-", "+", 1000, consumername=workers[index].consumer
            )
            at_risk += len(held)
            snapshots.append(broken(client, stream, ids))
            workers[index] = start(index, generation)
        wait_settled(client, stream, set(range(JOBS)), timeout=90)
        snapshots.append(broken(client, stream, ids))
    finally:
        for worker in workers:
            worker.kill()
    # Then no snapshot ever saw a record without its ack or an ack without its record,
    results = flowd.Results(client, stream)
    assert at_risk > 0, "no kill caught a job in flight"
    assert snapshots == [[]] * (KILLS + 1), f"seed {seed}: {snapshots}"
    # and every job ended SUCCEEDED with what it returned, acked.
    wrong = []
    for msg_id, n in by_id.items():
        result = results.get(msg_id)
        if result is None or result.status is not flowd.JobStatus.SUCCEEDED or result.value != n:
            wrong.append((msg_id, n, result))
    assert wrong == [], f"seed {seed}: {wrong[:5]}"
    assert int(client.xpending(stream, GROUP)["pending"]) == 0
    client.close()
