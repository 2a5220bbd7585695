"""Job results: what keeping them costs a queue, and 1,000 threads waiting for theirs.

Run from the repository root (about 2 minutes with the defaults)::

    python benchmarks/bench_results.py
    python benchmarks/bench_results.py --jobs 20000 --repeat 5 --waiters 1000
    FLOWD_REDIS_SERVER=/path/to/redis-6.2/redis-server python benchmarks/bench_results.py

Both parts use one private redis-server (never an existing one), emptied between runs.

1. **Throughput.** No-op jobs on ``flowd.Queue(...).run()`` in this process, concurrency
   8, configured like bench_compare.py's ``flowd c8``, without and with
   ``result_ttl`` (each success's record written in the MULTI of its XACK). The two take
   turns in ``--repeat`` rounds (the order alternates), each on a fresh stream of
   ``--jobs`` pre-enqueued jobs; the clock stops when nothing is pending and the group
   has read the last entry. The ratio is computed per round (with / without), then the
   median is taken. Redis's ``used_memory`` growth over each run shows what the kept
   records weigh.
2. **Waiting.** ``--waiters`` threads of this process, sharing one ``redis.Redis``
   client (its pool sized for all of them), each call ``Results.wait`` on its own job of
   a stream of that many jobs. Once they all block, they wait ``--idle`` seconds with
   nothing running (their once-a-second looks are the only work), then a
   ``flowd worker --burst`` subprocess (``result_ttl`` set) processes the jobs. It
   reports whether every wait returned SUCCEEDED, the wall times, the peak of
   ``connected_clients`` and ``blocked_clients`` (INFO clients, sampled every 20 ms),
   how long after its job finished each wait returned, and the CPU time of this
   process (``getrusage``) and of the server (INFO cpu, ``used_cpu_sys`` +
   ``used_cpu_user``) per phase. The same worker on the same jobs without waiters is the
   baseline for the server's CPU.

3. **Where the time goes** (``--breakdown``): per job, building a success record in the
   worker thread, and the acker's flush of a batch of 256 on one connection: XACK alone
   (a queue without results), XACK with each record's DEL, RPUSH and PEXPIRE in one
   MULTI/EXEC (what the acker sends), and, for comparison, one Lua script per batch doing
   the same (an alternative, not flowd's code).

Nothing is asserted about speed; a run fails only if a job is lost or a wait fails.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import redis  # noqa: E402
from bench_app import BenchJob, flowd_queue  # noqa: E402
from bench_bodies import make_body  # noqa: E402

import flowd  # noqa: E402
from benchmarks.compare.adapter_flowd import worker_argv  # noqa: E402
from benchmarks.compare.environment import environment  # noqa: E402
from benchmarks.compare.process import bench_env, stop_process  # noqa: E402
from benchmarks.compare.server import Context, private_server, unique  # noqa: E402
from benchmarks.compare.streams import fill_stream, flowd_finished  # noqa: E402
from flowd._codec.values import encode_value  # noqa: E402
from flowd._redis.keys import result_buckets_key  # noqa: E402
from flowd._redis.records import (  # noqa: E402
    ACK_WITH_RECORDS,
    SuccessRecords,
    ack_call,
    packed_ack_call,
)

#: The result_ttl of every run that keeps results (long enough to outlive the run).
RESULT_TTL = 3600.0
RUN_TIMEOUT = 600.0


# -- part 1: throughput without and with result_ttl


def count_records(client: redis.Redis, stream: str) -> int:
    """Successes' records kept for ``stream`` (in its buckets, flowd._redis.records)."""
    buckets = client.zrange(result_buckets_key(stream), 0, -1)
    return sum(int(client.hlen(bucket)) for bucket in buckets)


def one_run(client: redis.Redis, jobs: int, result_ttl: float | None) -> tuple[float, int]:
    """(jobs per second, growth of Redis's used_memory in bytes) of one run."""
    client.flushdb()
    stream = unique("bench-results")
    last = fill_stream(client, stream, jobs, "bench-key", None, group=False)
    before = int(client.info("memory")["used_memory"])
    queue = flowd_queue(client, stream, make_body("noop", client), 8, result_ttl=result_ttl)
    start = time.perf_counter()
    handle = queue.run()
    try:
        deadline = start + RUN_TIMEOUT
        while handle.stats().processed < jobs:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"processed {handle.stats().processed} of {jobs}")
            time.sleep(0.002)
        while not flowd_finished(client, stream, last):
            time.sleep(0.001)
        elapsed = time.perf_counter() - start
    finally:
        clean = handle.stop(timeout=30)
    if not clean:
        raise RuntimeError("the queue did not stop cleanly")
    grown = int(client.info("memory")["used_memory"]) - before
    records = count_records(client, stream)
    expected = jobs if result_ttl is not None else 0
    if records != expected:
        raise RuntimeError(f"{records} result records, expected {expected}")
    if result_ttl is not None:
        got = flowd.Results(client, stream).get(last)
        if got is None or got.status is not flowd.JobStatus.SUCCEEDED or got.finished_at is None:
            raise RuntimeError(f"the last job's result is {got!r}")
    return jobs / elapsed, grown


def throughput(ctx: Context, jobs: int, repeat: int) -> None:
    client = ctx.client(0)
    variants = {"flowd c8": None, "flowd c8 result_ttl": RESULT_TTL}
    for ttl in variants.values():  # warm-up: connections, scripts, plan caches
        one_run(client, min(jobs, 2000), ttl)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    memory: dict[str, list[int]] = {name: [] for name in variants}
    for round_ in range(repeat):
        names = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in names:
            rate, grown = one_run(client, jobs, variants[name])
            rates[name].append(rate)
            memory[name].append(grown)
    client.flushdb()

    print(f"\n1. no-op jobs, {jobs:,} per run, {repeat} alternating rounds, concurrency 8")
    print(f"{'variant':22} {'median/s':>10} {'min/s':>10} {'max/s':>10}  each round")
    for name, values in rates.items():
        each = " ".join(f"{v:,.0f}" for v in values)
        print(
            f"{name:22} {statistics.median(values):10,.0f} {min(values):10,.0f} "
            f"{max(values):10,.0f}  {each}"
        )
    ratios = [w / wo for w, wo in zip(rates["flowd c8 result_ttl"], rates["flowd c8"], strict=True)]
    print(
        f"with/without result_ttl: median {statistics.median(ratios):.2f}x "
        f"(rounds: {' '.join(f'{r:.2f}' for r in ratios)}; target >= 0.8x)"
    )
    extra = statistics.median(memory["flowd c8 result_ttl"]) - statistics.median(memory["flowd c8"])
    print(f"Redis memory kept per result (median growth difference / jobs): {extra / jobs:.0f} B")


# -- part 2: many threads waiting


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Peaks:
    """The most connected and blocked clients INFO clients showed while sampling."""

    connected: int = 0
    blocked: int = 0
    blocked_now: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self, client: redis.Redis) -> None:
        while not self.stop.wait(0.02):
            info = client.info("clients")
            self.connected = max(self.connected, int(info["connected_clients"]))
            self.blocked_now = int(info["blocked_clients"])
            self.blocked = max(self.blocked, self.blocked_now)


def spawn_worker(ctx: Context, stream: str) -> subprocess.Popen[bytes]:
    env = bench_env(BENCH_STREAM=stream, BENCH_RESULT_TTL=str(RESULT_TTL))
    log = open(ctx.tmp / f"{stream}.log", "wb")
    return subprocess.Popen(
        [*worker_argv(ctx.url(0)), "--burst"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def enqueue(client: redis.Redis, stream: str, jobs: int) -> list[str]:
    producer = flowd.Producer(client, stream)
    return producer.enqueue_bulk([BenchJob(i, "bench-key") for i in range(jobs)])


def worker_alone(ctx: Context, jobs: int) -> tuple[float, float]:
    """(seconds, server CPU seconds) of the burst worker on ``jobs`` jobs, no one waiting."""
    client = ctx.client(0)
    client.flushdb()
    stream = unique("bench-alone")
    ids = enqueue(client, stream, jobs)
    cpu, start = redis_cpu(client), time.perf_counter()
    proc = spawn_worker(ctx, stream)
    try:
        while not (client.exists(stream) and _all_acked(client, stream, ids[-1])):
            if proc.poll() is not None and not _all_acked(client, stream, ids[-1]):
                raise RuntimeError(f"the worker exited with {proc.returncode}")
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
    finally:
        stop_process(proc)
    return elapsed, redis_cpu(client) - cpu


def _all_acked(client: redis.Redis, stream: str, last: str) -> bool:
    try:
        return flowd_finished(client, stream, last)
    except redis.ResponseError:  # no group yet: the worker has not started
        return False


def waiting(ctx: Context, waiters: int, idle: float) -> None:
    sampler_client = redis.Redis.from_url(ctx.url(0))
    client = ctx.client(0)
    client.flushdb()
    stream = unique("bench-wait")
    ids = enqueue(client, stream, waiters)
    # One client for every waiter: each blocked wait holds one of its connections.
    shared = redis.Redis.from_url(ctx.url(0), max_connections=waiters + 16)
    results = flowd.Results(shared, stream)
    returned: list[tuple[flowd.JobResult | BaseException, float]] = [
        (RuntimeError("never returned"), 0.0)
    ] * waiters

    def wait(index: int) -> None:
        try:
            returned[index] = (results.wait(ids[index], timeout=RUN_TIMEOUT), time.time())
        except BaseException as exc:
            returned[index] = (exc, time.time())

    peaks = Peaks()
    sampler = threading.Thread(target=peaks.sample, args=(sampler_client,), daemon=True)
    sampler.start()
    cpu0, server0, t0 = own_cpu(), redis_cpu(client), time.perf_counter()
    threads = [
        threading.Thread(target=wait, args=(i,), name=f"bench-wait-{i}") for i in range(waiters)
    ]
    for thread in threads:
        thread.start()
    while peaks.blocked_now < waiters * 0.95:
        if time.perf_counter() - t0 > 120:
            raise RuntimeError(f"only {peaks.blocked_now} of {waiters} waits are blocked")
        time.sleep(0.01)
    cpu1, server1, t1 = own_cpu(), redis_cpu(client), time.perf_counter()
    time.sleep(idle)
    cpu2, server2, t2 = own_cpu(), redis_cpu(client), time.perf_counter()
    proc = spawn_worker(ctx, stream)
    try:
        for thread in threads:
            thread.join(RUN_TIMEOUT)
        cpu3, server3, t3 = own_cpu(), redis_cpu(client), time.perf_counter()
    finally:
        stop_process(proc)
        peaks.stop.set()
        sampler.join()
    failed = [
        (ids[i], got)
        for i, (got, _) in enumerate(returned)
        if not isinstance(got, flowd.JobResult) or got.status is not flowd.JobStatus.SUCCEEDED
    ]
    lags = sorted(
        when - got.finished_at.timestamp()
        for got, when in returned
        if isinstance(got, flowd.JobResult) and got.finished_at is not None
    )
    alone_s, alone_server = worker_alone(ctx, waiters)
    shared.close()
    sampler_client.close()
    client.flushdb()

    print(f"\n2. {waiters:,} threads in Results.wait on one shared client (pool {waiters + 16})")
    print(f"all {waiters:,} waits returned SUCCEEDED: {'yes' if not failed else 'NO'}")
    for job_id, got in failed[:5]:
        print(f"  {job_id}: {got!r}")
    print(f"peak connected_clients {peaks.connected:,}, peak blocked_clients {peaks.blocked:,}")
    print(f"{'phase':44} {'wall s':>7} {'this process CPU s':>19} {'server CPU s':>13}")
    print(
        f"{'threads started until 95% blocked':44} {t1 - t0:7.2f} {cpu1 - cpu0:19.2f} "
        f"{server1 - server0:13.2f}"
    )
    print(
        f"{f'all blocked, nothing running ({idle:g} s)':44} {t2 - t1:7.2f} {cpu2 - cpu1:19.2f} "
        f"{server2 - server1:13.2f}"
    )
    print(
        f"{'worker spawned until every wait returned':44} {t3 - t2:7.2f} {cpu3 - cpu2:19.2f} "
        f"{server3 - server2:13.2f}"
    )
    print(
        f"{'baseline: the same worker, no one waiting':44} {alone_s:7.2f} {'-':>19} "
        f"{alone_server:13.2f}"
    )
    if lags:
        print(
            "job finished (its record made) -> wait returned: "
            f"p50 {1000 * statistics.median(lags):.1f} ms, "
            f"p99 {1000 * lags[int(0.99 * (len(lags) - 1))]:.1f} ms, max {1000 * lags[-1]:.1f} ms"
        )
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"this process's peak RSS: {peak_rss:.0f} MB")


# -- part 3: where the time goes


def pending_stream(client: redis.Redis, jobs: int) -> tuple[str, list[str]]:
    """A fresh stream of ``jobs`` entries, all read (pending) by consumer c of group g."""
    stream = unique("bench-breakdown")
    fill_stream(client, stream, jobs, "bench-key", None, group=True)
    reply = client.xreadgroup("g", "c", {stream: ">"}, count=jobs)
    return stream, [entry[0].decode() for entry in reply[0][1]]


def breakdown(ctx: Context, jobs: int, batch: int = 256) -> None:
    client = ctx.client(0)
    client.flushdb()
    ttl_ms = int(RESULT_TTL * 1000)
    records = SuccessRecords("host-1-abcdef", "g")
    start = time.perf_counter()
    for _ in range(jobs):
        records.record(encode_value(None), 1, 1, 2)
    build = (time.perf_counter() - start) / jobs
    record = records.record(encode_value(None), 1, 1, 2)
    client.script_load(ACK_WITH_RECORDS.source)

    def xack(stream: str, ids: list[str]) -> list[bytes]:
        return list(conn.pack_commands([("XACK", stream, "g", *ids)]))

    def script(stream: str, ids: list[str]) -> list[bytes]:
        return list(conn.pack_commands([ack_call(stream, "g", ttl_ms, [(i, record) for i in ids])]))

    def framed(stream: str, ids: list[str]) -> list[bytes]:
        # What the acker sends: the script call framed by flowd, not by redis-py
        return [packed_ack_call(stream, "g", ttl_ms, [(i, record) for i in ids])]

    conn = client.connection_pool.get_connection()
    try:
        rows = []
        for name, make in (
            ("XACK only", xack),
            ("XACK with records, redis-py framing", script),
            ("XACK with records, as the acker sends it", framed),
        ):
            stream, ids = pending_stream(client, jobs)
            packing = 0.0
            start = time.perf_counter()
            for i in range(0, jobs, batch):
                t = time.perf_counter()
                packed = make(stream, ids[i : i + batch])
                packing += time.perf_counter() - t
                conn.send_packed_command(packed)
                for _ in packed:
                    conn.read_response(disable_decoding=True)
            rows.append((name, (time.perf_counter() - start) / jobs, packing / jobs))
            if client.xpending(stream, "g")["pending"] != 0:
                raise RuntimeError(f"{name}: entries left pending")
    finally:
        client.connection_pool.release(conn)
    client.flushdb()
    print(f"\n3. where the time goes, per job ({jobs:,} jobs, acks in batches of {batch})")
    print(f"{'building a success record (worker thread)':50} {build * 1e6:6.2f} us")
    for name, total, packing in rows:
        print(f"{'flush: ' + name:50} {total * 1e6:6.2f} us (framing {packing * 1e6:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="no-op jobs per throughput run")
    parser.add_argument("--repeat", type=int, default=5, help="throughput rounds")
    parser.add_argument("--waiters", type=int, default=1000, help="threads in Results.wait")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds all waits sit blocked")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-waiting", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="also part 3")
    args = parser.parse_args()
    with private_server() as ctx:
        env = environment(ctx)
        load = ", ".join(f"{v:.2f}" for v in env["load_average_at_start"])
        print(
            f"redis-server {env['redis_server']}, Python {env['python']}, "
            f"redis-py {env['redis_py']}, hiredis {env['hiredis']}, flowd {env['flowd']}, "
            f"{env['cpu_count']} CPUs, load average {load}"
        )
        if not args.skip_throughput:
            throughput(ctx, args.jobs, args.repeat)
        if not args.skip_waiting:
            waiting(ctx, args.waiters, args.idle)
        if args.breakdown:
            breakdown(ctx, args.jobs)


if __name__ == "__main__":
    main()
