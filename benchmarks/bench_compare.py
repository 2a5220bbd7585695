"""flowd against raw redis-py and against rq, Dramatiq and Celery, on one private redis-server.

Run from the repository root (12-15 minutes; ``--quick`` under 2)::

    python benchmarks/bench_compare.py
    python benchmarks/bench_compare.py --quick --json /tmp/compare.json
    python benchmarks/bench_compare.py --skip-peers --rss-jobs 200000
    python benchmarks/bench_compare.py --targets   # only the rows of flowd's targets

``--targets`` runs the rows the performance targets name (README.rst, Performance), side
by side in each repeat: raw pipelined XADD vs ``enqueue_bulk``; the raw one-thread
COUNT-100 loop, flowd (default settings, concurrency 8) and Dramatiq (8 threads) with the
no-op and one-INCR bodies; enqueue-to-start latency at 500 jobs/s; RSS over 1,000,000
jobs. It ends with one line per target: the figure, the target, met or missed.

Scenarios (benchmarks/README.md says what each row means):

- enqueue: flowd ``enqueue`` / ``enqueue_bulk`` vs one XADD per job / pipelined XADD, and
  rq ``enqueue`` / ``enqueue_many``, Dramatiq ``send``, Celery ``delay``;
- processing, per body (no-op, one INCR, a 5 ms sleep): the raw loops of DESIGN.md (one
  thread; eight threads, each its own consumer), flowd in this process (concurrency 8 and
  32), ``flowd worker`` subprocesses (1 and 2 processes), rq SimpleWorker (burst),
  Dramatiq (1 process, 8 threads), Celery (threads pool, 8);
- latency: enqueue-to-start p50/p99 at a steady rate (500 jobs/s), raw loop and flowd;
- memory: RSS of a ``flowd worker`` after 10,000 and after ``--rss-jobs`` no-op jobs.

Every repeat runs all contenders of a scenario in turn (the order rotates per repeat), on
the same server, with the same N and the same job bodies; each row's ratio is computed
against its baseline *of the same repeat*, then the median is taken. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import psutil  # noqa: E402
import redis  # noqa: E402
from bench_app import BenchJob, LatencyJob, flowd_queue  # noqa: E402
from bench_bodies import BODIES, SLEEP_SECONDS, make_body  # noqa: E402
from bench_enqueue import raw_bulk, raw_single  # noqa: E402
from bench_process import raw_loop, raw_threads  # noqa: E402

import flowd  # noqa: E402
from flowd.cli.embedded import RedisServer  # noqa: E402

#: One Redis database per contender, all on the same server.
DB = {"flowd": 0, "rq": 1, "dramatiq": 2, "celery": 3}
PEERS = ("rq", "dramatiq", "celery")
PEER_QUEUE = "bench"  # the queue name in peer_dramatiq / peer_celery
POLL = 0.005  # seconds between completion checks of a subprocess run
RUN_TIMEOUT = 900.0  # a run that takes longer than this is a failure


# ---------------------------------------------------------------------------
# Configuration, context and results


@dataclass
class Config:
    jobs: int = 10_000
    sleep_jobs: int = 1_000
    enqueue_jobs: int = 10_000
    repeat: int = 3
    latency_rate: int = 500
    latency_seconds: float = 10.0
    rss_first: int = 10_000
    rss_jobs: int = 1_000_000
    rss_chunk: int = 10_000
    peers: bool = True
    targets: bool = False  # only the rows the performance targets name
    json: str = str(HERE / "results-compare.json")  # ignored by git (results*.json)


class Context:
    """The private server, one client per database, and a scratch directory for logs."""

    def __init__(self, server: RedisServer, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        self._clients: dict[int, redis.Redis] = {}

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.server.port}/{db}"

    def client(self, db: int) -> redis.Redis:
        if db not in self._clients:
            self._clients[db] = redis.Redis.from_url(self.url(db))
        return self._clients[db]

    def flush_peer(self, name: str) -> None:
        """Empty a peer's own database (only ever on the private server started here)."""
        self.client(DB[name]).flushdb()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


@dataclass
class Row:
    scenario: str
    body: str
    variant: str
    unit: str
    n: int
    baseline: str | None
    values: list[float | None] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Results:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], Row] = {}

    def add(
        self,
        scenario: str,
        body: str,
        variant: str,
        unit: str,
        n: int,
        baseline: str | None,
        value: float | None,
        extra: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        key = (scenario, body, variant)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = Row(scenario, body, variant, unit, n, baseline)
        row.values.append(value)
        row.extra.append(extra or {})
        if error:
            row.errors.append(error)

    def get(self, scenario: str, body: str, variant: str) -> Row | None:
        return self.rows.get((scenario, body, variant))

    def ratios(self, row: Row, other: Row | None) -> list[float]:
        """Per-repeat ratios row/other (repeats where either failed are left out)."""
        if other is None:
            return []
        return [
            a / b
            for a, b in zip(row.values, other.values, strict=False)
            if a is not None and b is not None and b
        ]

    def baseline_ratios(self, row: Row) -> list[float]:
        if row.baseline is None:
            return []
        return self.ratios(row, self.get(row.scenario, row.body, row.baseline))


@dataclass
class Variant:
    """One contender of a scenario: ``run(ctx, n)`` returns its value (and details)."""

    name: str
    baseline: str | None
    run: Callable[[Context, int], tuple[float, dict[str, Any]]]
    peer: str | None = None


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def timed_rate(n: int, run: Callable[[], object]) -> tuple[float, float]:
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    return n / elapsed, elapsed


# ---------------------------------------------------------------------------
# Scenario 1: enqueue


def bench_fields(n: int, key: str) -> list[dict[str, str]]:
    """The stream fields of n BenchJobs, built before the clock starts (raw contenders)."""
    return [{"n": str(i), "key": key} for i in range(n)]


def check_xlen(client: redis.Redis, stream: str, n: int) -> None:
    length = client.xlen(stream)
    if length != n:
        raise RuntimeError(f"{stream}: expected {n} entries, found {length}")


def enqueue_raw(bulk: bool) -> Callable[[Context, int], tuple[float, dict[str, Any]]]:
    def run(ctx: Context, n: int) -> tuple[float, dict[str, Any]]:
        client, stream = ctx.client(DB["flowd"]), unique("bench-enq-raw")
        fields = bench_fields(n, "bench-key")
        add = raw_bulk if bulk else raw_single
        try:
            rate, elapsed = timed_rate(n, lambda: add(client, stream, fields))
            check_xlen(client, stream, n)
        finally:
            client.delete(stream)
        return rate, {"seconds": elapsed}

    return run


def enqueue_flowd(bulk: bool) -> Callable[[Context, int], tuple[float, dict[str, Any]]]:
    def run(ctx: Context, n: int) -> tuple[float, dict[str, Any]]:
        client, stream = ctx.client(DB["flowd"]), unique("bench-enq-flowd")
        jobs = [BenchJob(i, "bench-key") for i in range(n)]
        producer = flowd.Producer(client, stream)

        def one_by_one() -> None:
            enqueue = producer.enqueue
            for job in jobs:
                enqueue(job)

        try:
            add = (lambda: producer.enqueue_bulk(jobs)) if bulk else one_by_one
            rate, elapsed = timed_rate(n, add)
            check_xlen(client, stream, n)
        finally:
            client.delete(stream)
        return rate, {"seconds": elapsed}

    return run


def enqueue_rq(bulk: bool) -> Callable[[Context, int], tuple[float, dict[str, Any]]]:
    def run(ctx: Context, n: int) -> tuple[float, dict[str, Any]]:
        import peer_rq
        import rq

        queue = rq.Queue(unique("bench"), connection=ctx.client(DB["rq"]))
        try:
            if bulk:
                datas = [rq.Queue.prepare_data(peer_rq.job, (i, "bench-key")) for i in range(n)]
                rate, elapsed = timed_rate(n, lambda: queue.enqueue_many(datas))
            else:

                def one_by_one() -> None:
                    enqueue, job = queue.enqueue, peer_rq.job
                    for i in range(n):
                        enqueue(job, i, "bench-key")

                rate, elapsed = timed_rate(n, one_by_one)
            if len(queue) != n:
                raise RuntimeError(f"rq queue holds {len(queue)} jobs, expected {n}")
        finally:
            ctx.flush_peer("rq")
        return rate, {"seconds": elapsed}

    return run


def enqueue_dramatiq(ctx: Context, n: int) -> tuple[float, dict[str, Any]]:
    import peer_dramatiq

    def one_by_one() -> None:
        send = peer_dramatiq.job.send
        for i in range(n):
            send(i, "bench-key")

    try:
        rate, elapsed = timed_rate(n, one_by_one)
        found = ctx.client(DB["dramatiq"]).hlen(f"dramatiq:{PEER_QUEUE}.msgs")
        if found != n:
            raise RuntimeError(f"dramatiq queue holds {found} messages, expected {n}")
    finally:
        ctx.flush_peer("dramatiq")
    return rate, {"seconds": elapsed}


def enqueue_celery(ctx: Context, n: int) -> tuple[float, dict[str, Any]]:
    import peer_celery

    def one_by_one() -> None:
        delay = peer_celery.job.delay
        for i in range(n):
            delay(i, "bench-key")

    try:
        rate, elapsed = timed_rate(n, one_by_one)
        found = ctx.client(DB["celery"]).llen(PEER_QUEUE)
        if found != n:
            raise RuntimeError(f"celery queue holds {found} messages, expected {n}")
    finally:
        ctx.flush_peer("celery")
    return rate, {"seconds": elapsed}


def enqueue_variants() -> list[Variant]:
    single, bulk = "raw XADD", "raw XADD pipelined"
    return [
        Variant(single, None, enqueue_raw(bulk=False)),
        Variant(bulk, None, enqueue_raw(bulk=True)),
        Variant("flowd enqueue", single, enqueue_flowd(bulk=False)),
        Variant("flowd enqueue_bulk", bulk, enqueue_flowd(bulk=True)),
        Variant("rq enqueue", single, enqueue_rq(bulk=False), "rq"),
        Variant("rq enqueue_many", bulk, enqueue_rq(bulk=True), "rq"),
        Variant("dramatiq send", single, enqueue_dramatiq, "dramatiq"),
        Variant("celery delay", single, enqueue_celery, "celery"),
    ]


# ---------------------------------------------------------------------------
# Scenario 2: processing
#
# Every contender gets N jobs enqueued before its clock starts. In-process contenders (the
# raw loops, flowd's Queue) start the clock when they start. A worker subprocess is first
# given a start marker (a job with n = -1, enqueued ahead of the N jobs) and the clock
# starts when the marker's side effect shows up, so that interpreter start-up, imports and
# connecting are left out alike for flowd and for the peers (they are reported in each
# run's details as "startup_s"). The clock stops when the last job's effect is visible in
# Redis: the counter reaching N for the INCR body; for the others, the contender's own
# record that every job finished (flowd: nothing pending and everything delivered; rq: its
# finished-job registry; Dramatiq: its message hash empty, which its acks do; Celery: its
# queue and its unacked hash empty, with acks_late).


def fill_stream(
    client: redis.Redis, stream: str, n: int, key: str, marker: str | None, group: bool
) -> str:
    """XADD the N jobs (after a start marker, if given); returns the last id."""
    fields = bench_fields(n, key)
    if marker is not None:
        fields.insert(0, {"n": "-1", "key": marker})
    last = ""
    for start in range(0, len(fields), 1000):
        pipe = client.pipeline(transaction=False)
        for entry in fields[start : start + 1000]:
            pipe.xadd(stream, entry)  # type: ignore[arg-type]
        last = pipe.execute()[-1].decode()
    if group:
        client.xgroup_create(stream, "g", id="0")
    return last


def flowd_finished(client: redis.Redis, stream: str, last_id: str) -> bool:
    for info in client.xinfo_groups(stream):
        if info["name"] in (b"g", "g"):
            delivered = info["last-delivered-id"]
            if isinstance(delivered, bytes):
                delivered = delivered.decode()
            return bool(info["pending"] == 0 and delivered == last_id)
    return False


def counter_reached(client: redis.Redis, key: str, n: int) -> Callable[[], bool]:
    def check() -> bool:
        value = client.get(key)
        return value is not None and int(value) >= n

    return check


def raw_variant(threads: int) -> Callable[[Context, str, int], tuple[float, dict[str, Any]]]:
    def run(ctx: Context, body: str, n: int) -> tuple[float, dict[str, Any]]:
        client, stream = ctx.client(DB["flowd"]), unique("bench-raw")
        key = unique("bench-counter")
        fill_stream(client, stream, n, key, None, group=True)
        job_body = make_body(body, client)

        def call() -> None:
            job_body(0, key)

        try:
            if threads == 1:
                rate = raw_loop(client, stream, n, call)
            else:
                rate = raw_threads(client, stream, n, call, threads)
            if body == "incr" and int(client.get(key) or 0) != n:
                raise RuntimeError(f"counter is {client.get(key)!r}, expected {n}")
        finally:
            client.delete(stream, key)
        return rate, {}

    return run


def flowd_inprocess(
    concurrency: int,
) -> Callable[[Context, str, int], tuple[float, dict[str, Any]]]:
    def run(ctx: Context, body: str, n: int) -> tuple[float, dict[str, Any]]:
        client, stream = ctx.client(DB["flowd"]), unique("bench-flowd")
        key = unique("bench-counter")
        last = fill_stream(client, stream, n, key, None, group=False)
        queue = flowd_queue(client, stream, make_body(body, client), concurrency)
        done = (
            counter_reached(client, key, n)
            if body == "incr"
            else lambda: flowd_finished(client, stream, last)
        )
        try:
            start = time.perf_counter()
            handle = queue.run()
            try:
                deadline = start + RUN_TIMEOUT
                while handle.stats().processed < n:
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"flowd processed {handle.stats().processed} of {n}")
                    time.sleep(0.002)
                while not done():
                    time.sleep(0.001)
                elapsed = time.perf_counter() - start
            finally:
                clean = handle.stop(timeout=30)
            if not clean:
                raise RuntimeError("flowd did not stop cleanly")
        finally:
            client.delete(stream, key)
        return n / elapsed, {"seconds": elapsed}

    return run


def bench_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM (a graceful stop for every contender), then SIGKILL its own process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session started for this child only
            proc.wait(timeout)


def run_worker_process(
    ctx: Context,
    name: str,
    argv: list[str],
    env: dict[str, str],
    marker_client: redis.Redis,
    marker: str,
    done: Callable[[], bool],
    n: int,
    exits_itself: bool = False,
) -> tuple[float, dict[str, Any]]:
    """Start a worker subprocess; time from its start marker until ``done()``.

    ``exits_itself``: a burst worker, given a few seconds to exit before SIGTERM.
    """
    log_path = ctx.tmp / f"{unique(name.replace(' ', '_'))}.log"
    with open(log_path, "wb") as log:
        spawned = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while not marker_client.blpop([marker], timeout=1):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} before its start")
                if time.perf_counter() - spawned > 120:
                    raise RuntimeError(f"{name} did not start within 120 s")
            start = time.perf_counter()
            while not done():
                if proc.poll() is not None and not done():
                    raise RuntimeError(f"{name} exited with {proc.returncode} before the end")
                if time.perf_counter() - start > RUN_TIMEOUT:
                    raise RuntimeError(f"{name} did not finish within {RUN_TIMEOUT} s")
                time.sleep(POLL)
            end = time.perf_counter()
        except BaseException:
            stop_process(proc)
            tail = log_path.read_text(errors="replace")[-3000:]
            print(f"--- {name} log ({log_path}):\n{tail}", file=sys.stderr)
            raise
        if exits_itself:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        stop_process(proc)
    return n / (end - start), {
        "seconds": end - start,
        "startup_s": start - spawned,
        "from_spawn_s": end - spawned,
    }


def flowd_worker(
    concurrency: int, processes: int
) -> Callable[[Context, str, int], tuple[float, dict[str, Any]]]:
    def run(ctx: Context, body: str, n: int) -> tuple[float, dict[str, Any]]:
        client, stream = ctx.client(DB["flowd"]), unique("bench-worker")
        key, marker = unique("bench-counter"), unique("bench-marker")
        last = fill_stream(client, stream, n, key, marker, group=False)
        argv = [
            sys.executable,
            "-m",
            "flowd",
            "--log-level",
            "WARNING",
            "worker",
            "bench_app:make_queue",
            "--url",
            ctx.url(DB["flowd"]),
            "--processes",
            str(processes),
        ]
        env = bench_env(BENCH_STREAM=stream, BENCH_BODY=body, BENCH_CONCURRENCY=str(concurrency))
        done = (
            counter_reached(client, key, n)
            if body == "incr"
            else lambda: flowd_finished(client, stream, last)
        )
        try:
            return run_worker_process(
                ctx, f"flowd worker c{concurrency} x{processes}", argv, env, client, marker, done, n
            )
        finally:
            client.delete(stream, key, marker)

    return run


def peer_env(body: str) -> dict[str, str]:
    return bench_env(BENCH_BODY=body)


def rq_worker(ctx: Context, body: str, n: int) -> tuple[float, dict[str, Any]]:
    import peer_rq
    import rq

    client = ctx.client(DB["rq"])
    name = unique("bench")
    key, marker = unique("bench-counter"), unique("bench-marker")
    queue = rq.Queue(name, connection=client)
    datas = [rq.Queue.prepare_data(peer_rq.job, (-1, marker))]
    datas += [rq.Queue.prepare_data(peer_rq.job, (i, key)) for i in range(n)]
    for start in range(0, len(datas), 5000):
        queue.enqueue_many(datas[start : start + 5000])
    finished = rq.registry.FinishedJobRegistry(name, connection=client)
    done = counter_reached(client, key, n) if body == "incr" else lambda: finished.count >= n + 1
    argv = [
        sys.executable,
        "-m",
        "rq.cli",
        "worker",
        "--burst",
        "--worker-class",
        "rq.worker.SimpleWorker",
        "--url",
        ctx.url(DB["rq"]),
        "--logging_level",
        "WARNING",
        name,
    ]
    try:
        return run_worker_process(
            ctx, "rq", argv, peer_env(body), client, marker, done, n, exits_itself=True
        )
    finally:
        ctx.flush_peer("rq")


def dramatiq_worker(ctx: Context, body: str, n: int) -> tuple[float, dict[str, Any]]:
    import peer_dramatiq

    client = ctx.client(DB["dramatiq"])
    key, marker = unique("bench-counter"), unique("bench-marker")
    send = peer_dramatiq.job.send
    send(-1, marker)
    for i in range(n):
        send(i, key)
    msgs = f"dramatiq:{PEER_QUEUE}.msgs"
    done = counter_reached(client, key, n) if body == "incr" else lambda: client.hlen(msgs) == 0
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        "peer_dramatiq",
        "--processes",
        "1",
        "--threads",
        "8",
        "--queues",
        PEER_QUEUE,
    ]
    try:
        return run_worker_process(ctx, "dramatiq", argv, peer_env(body), client, marker, done, n)
    finally:
        ctx.flush_peer("dramatiq")


def celery_worker(ctx: Context, body: str, n: int) -> tuple[float, dict[str, Any]]:
    import peer_celery

    client = ctx.client(DB["celery"])
    key, marker = unique("bench-counter"), unique("bench-marker")
    task = peer_celery.job
    with peer_celery.app.producer_or_acquire() as producer:
        task.apply_async((-1, marker), producer=producer)
        for i in range(n):
            task.apply_async((i, key), producer=producer)

    def finished() -> bool:
        pipe = client.pipeline(transaction=False)
        pipe.llen(PEER_QUEUE)
        pipe.hlen("unacked")
        queued, unacked = pipe.execute()
        return bool(queued == 0 and unacked == 0)

    done = counter_reached(client, key, n) if body == "incr" else finished
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "peer_celery",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        "8",
        "--queues",
        PEER_QUEUE,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        "WARNING",
    ]
    try:
        return run_worker_process(ctx, "celery", argv, peer_env(body), client, marker, done, n)
    finally:
        ctx.flush_peer("celery")


def processing_variants() -> list[tuple[str, str | None, Callable[..., Any], str | None]]:
    base = "raw 1 thread"
    return [
        (base, None, raw_variant(1), None),
        ("raw 8 threads", base, raw_variant(8), None),
        ("flowd c8", base, flowd_inprocess(8), None),
        ("flowd c32", base, flowd_inprocess(32), None),
        ("flowd worker c8", base, flowd_worker(8, 1), None),
        ("flowd worker c8 x2", base, flowd_worker(8, 2), None),
        ("flowd worker c32", base, flowd_worker(32, 1), None),
        ("flowd worker c32 x2", base, flowd_worker(32, 2), None),
        ("rq SimpleWorker", base, rq_worker, "rq"),
        ("dramatiq 8 threads", base, dramatiq_worker, "dramatiq"),
        ("celery threads 8", base, celery_worker, "celery"),
    ]


# ---------------------------------------------------------------------------
# Scenario 3: latency (enqueue to start, at a steady rate)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def paced_producer(
    client: redis.Redis, stream: str, rate: int, total: int, stop: threading.Event
) -> threading.Thread:
    """A thread that XADDs ``total`` LatencyJobs at ``rate`` per second, each stamped with
    ``time.time()`` just before its XADD (the same raw XADD for every contender)."""

    def produce() -> None:
        start = time.perf_counter()
        for i in range(total):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if stop.is_set():
                return
            client.xadd(stream, {"n": str(i), "key": "bench-key", "t": repr(time.time())})

    return threading.Thread(target=produce, name="bench-producer")


def latency_raw(client: redis.Redis, stream: str, samples: list[float], stop: threading.Event):
    client.xgroup_create(stream, "g", id="0", mkstream=True)

    def loop() -> None:
        while not stop.is_set():
            reply = client.xreadgroup("g", "raw", {stream: ">"}, count=100, block=100)
            if not reply:
                continue
            entries = reply[0][1]
            for _msg_id, fields in entries:
                samples.append(time.time() - float(fields[b"t"]))
            client.xack(stream, "g", *[entry[0] for entry in entries])

    thread = threading.Thread(target=loop, name="bench-raw-consumer")
    thread.start()
    return thread.join


def latency_flowd(client: redis.Redis, stream: str, samples: list[float], stop: threading.Event):
    def worker(task: flowd.Task[LatencyJob]) -> None:
        samples.append(time.time() - task.job.t)

    queue = flowd.Queue(
        client,
        stream=stream,
        group="g",
        job=LatencyJob,
        worker=worker,
        concurrency=8,
        claimer=flowd.Claimer(min_idle_time=30.0, max_retries=3),
    )
    handle = queue.run()

    def finish() -> None:
        stop.wait()
        handle.stop(timeout=30)

    return finish


def latency_run(
    ctx: Context, start_consumer: Callable[..., Callable[[], None]], rate: int, seconds: float
) -> tuple[float, float, dict[str, Any]]:
    client, stream = ctx.client(DB["flowd"]), unique("bench-latency")
    total = int(rate * seconds)
    samples: list[float] = []
    stop = threading.Event()
    try:
        finish = start_consumer(client, stream, samples, stop)
        time.sleep(0.3)  # let the consumer reach its blocking read
        producer = paced_producer(client, stream, rate, total, stop)
        producer.start()
        producer.join()
        deadline = time.perf_counter() + 30
        while len(samples) < total and time.perf_counter() < deadline:
            time.sleep(0.01)
        stop.set()
        finish()
    finally:
        stop.set()
        client.delete(stream)
    if len(samples) < total:
        raise RuntimeError(f"latency run saw {len(samples)} of {total} jobs")
    warm = samples[min(len(samples) // 10, rate // 2) :]  # the first half second is warm-up
    p50, p99 = percentile(warm, 50) * 1000, percentile(warm, 99) * 1000
    return p50, p99, {"samples": len(warm), "max_ms": max(warm) * 1000}


# ---------------------------------------------------------------------------
# Scenario 4: memory (RSS of a flowd worker process)


def group_progress(client: redis.Redis, stream: str) -> tuple[int, int]:
    """(entries delivered to group g, pending) from XINFO GROUPS (Redis >= 7 has entries-read)."""
    for info in client.xinfo_groups(stream):
        if info["name"] in (b"g", "g"):
            read = info.get("entries-read")
            if read is None:  # Redis 6.2: count what is left after last-delivered-id
                last = info["last-delivered-id"]
                left = len(client.xrange(stream, min=b"(" + _as_bytes(last), max="+"))
                read = int(client.xlen(stream)) - left  # only valid before any trim
            return int(read), int(info["pending"])
    return 0, 0


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def memory_run(ctx: Context, cfg: Config) -> dict[str, Any]:
    client, stream = ctx.client(DB["flowd"]), unique("bench-rss")
    producer = flowd.Producer(client, stream)
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    argv = [
        sys.executable,
        "-m",
        "flowd",
        "--log-level",
        "WARNING",
        "worker",
        "bench_app:make_queue",
        "--url",
        ctx.url(DB["flowd"]),
    ]
    env = bench_env(BENCH_STREAM=stream, BENCH_BODY="noop", BENCH_CONCURRENCY="8")
    log_path = ctx.tmp / "rss-worker.log"
    enqueued = 0
    trend: list[dict[str, float]] = []

    def enqueue(count: int) -> None:
        nonlocal enqueued
        producer.enqueue_bulk(BenchJob(enqueued + i, "bench-key") for i in range(count))
        enqueued += count

    def wait_processed(target: int, proc: subprocess.Popen[bytes]) -> None:
        while True:
            read, pending = group_progress(client, stream)
            if read - pending >= target:
                return
            if proc.poll() is not None:
                raise RuntimeError(f"the flowd worker exited with {proc.returncode}")
            time.sleep(0.05)

    def rss_mb(proc: psutil.Process) -> float:
        return float(proc.memory_info().rss) / 2**20

    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            ps = psutil.Process(proc.pid)
            enqueue(cfg.rss_first)
            wait_processed(cfg.rss_first, proc)
            time.sleep(1.0)
            first = rss_mb(ps)
            trend.append({"processed": cfg.rss_first, "rss_mb": first})
            step = max(cfg.rss_chunk, cfg.rss_jobs // 20)
            next_sample = cfg.rss_first + step
            while enqueued < cfg.rss_jobs:
                read, pending = group_progress(client, stream)
                if enqueued - read < 2 * cfg.rss_chunk:  # keep the backlog small
                    enqueue(min(cfg.rss_chunk, cfg.rss_jobs - enqueued))
                else:
                    time.sleep(0.01)
                if read - pending >= next_sample:
                    trend.append({"processed": read - pending, "rss_mb": rss_mb(ps)})
                    next_sample += step
                if proc.poll() is not None:
                    raise RuntimeError(f"the flowd worker exited with {proc.returncode}")
            wait_processed(cfg.rss_jobs, proc)
            time.sleep(1.0)
            last = rss_mb(ps)
            trend.append({"processed": cfg.rss_jobs, "rss_mb": last})
            elapsed = time.perf_counter() - started
            xlen = int(client.xlen(stream))
        except BaseException:
            stop_process(proc)
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        stop_process(proc)
    client.delete(stream)
    return {
        "rss_first_mb": first,
        "rss_last_mb": last,
        "trend": trend,
        "seconds": elapsed,
        "stream_length_at_end": xlen,
        "exit_code": proc.returncode,
    }


# ---------------------------------------------------------------------------
# Running, reporting


def rotated(items: list[Any], by: int) -> list[Any]:
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


def attempt(
    results: Results,
    scenario: str,
    body: str,
    name: str,
    unit: str,
    n: int,
    baseline: str | None,
    run: Callable[[], tuple[float, dict[str, Any]]],
) -> None:
    try:
        value, extra = run()
    except Exception as exc:
        print(f"  {scenario}/{body}/{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        results.add(scenario, body, name, unit, n, baseline, None, error=f"{exc!r}")
        return
    extra["loadavg_1m"] = os.getloadavg()[0]  # other work on the machine skews everything
    results.add(scenario, body, name, unit, n, baseline, value, extra)
    if "startup_s" in extra:  # spawn to start marker, for every body and repeat
        results.add("startup", "-", name, "s", 1, None, extra["startup_s"])
    print(f"  {scenario:<10} {body:<6} {name:<22} {value:>12,.1f} {unit}", flush=True)


def warm_up(ctx: Context, variants: list[Variant]) -> None:
    """Each enqueue path once on a few jobs (connections, imports, caches); not recorded."""
    for variant in variants:
        variant.run(ctx, 200)


#: The rows the targets name (--targets): enqueue variants, processing variants and bodies.
TARGET_ENQUEUE = ("raw XADD pipelined", "flowd enqueue_bulk")
TARGET_PROCESSING = ("raw 1 thread", "flowd c8", "dramatiq 8 threads")
TARGET_BODIES = ("noop", "incr")


def run_enqueue(ctx: Context, cfg: Config, results: Results, repeat: int) -> None:
    variants = [v for v in enqueue_variants() if cfg.peers or v.peer is None]
    if cfg.targets:
        variants = [v for v in variants if v.name in TARGET_ENQUEUE]
    if repeat == 0:
        warm_up(ctx, variants)
    for v in rotated(variants, repeat):
        attempt(
            results,
            "enqueue",
            "-",
            v.name,
            "jobs/s",
            cfg.enqueue_jobs,
            v.baseline,
            lambda v=v: v.run(ctx, cfg.enqueue_jobs),
        )


def run_processing(ctx: Context, cfg: Config, results: Results, repeat: int) -> None:
    variants = [v for v in processing_variants() if cfg.peers or v[3] is None]
    bodies = BODIES
    if cfg.targets:
        variants = [v for v in variants if v[0] in TARGET_PROCESSING]
        bodies = TARGET_BODIES
    for body in bodies:
        n = cfg.sleep_jobs if body == "sleep" else cfg.jobs
        for name, baseline, run, _peer in rotated(variants, repeat):
            attempt(
                results,
                "processing",
                body,
                name,
                "jobs/s",
                n,
                baseline,
                lambda run=run, body=body, n=n: run(ctx, body, n),
            )


def run_latency(ctx: Context, cfg: Config, results: Results, repeat: int) -> None:
    contenders = [("raw 1 thread", latency_raw), ("flowd c8", latency_flowd)]
    for name, start in rotated(contenders, repeat):
        try:
            p50, p99, extra = latency_run(ctx, start, cfg.latency_rate, cfg.latency_seconds)
        except Exception as exc:
            print(f"  latency/{name}: FAILED: {exc!r}", file=sys.stderr)
            for q in ("p50", "p99"):
                results.add("latency", q, name, "ms", 0, None, None, error=repr(exc))
            continue
        n = int(cfg.latency_rate * cfg.latency_seconds)
        base = None if name == "raw 1 thread" else "raw 1 thread"
        results.add("latency", "p50", name, "ms", n, base, p50, extra)
        results.add("latency", "p99", name, "ms", n, base, p99, extra)
        print(f"  latency    {name:<22} p50 {p50:.3f} ms  p99 {p99:.3f} ms", flush=True)


def run_memory(ctx: Context, cfg: Config, results: Results) -> None:
    try:
        out = memory_run(ctx, cfg)
    except Exception as exc:
        print(f"  memory: FAILED: {exc!r}", file=sys.stderr)
        results.add("memory", "noop", "flowd worker c8", "MB", cfg.rss_jobs, None, None)
        return
    first, last = out["rss_first_mb"], out["rss_last_mb"]
    name_first = f"RSS after {cfg.rss_first:,}"
    results.add("memory", "noop", name_first, "MB", cfg.rss_first, None, first, out)
    results.add(
        "memory", "noop", f"RSS after {cfg.rss_jobs:,}", "MB", cfg.rss_jobs, name_first, last
    )
    print(f"  memory     RSS {first:.1f} MB -> {last:.1f} MB ({out['seconds']:.0f} s)", flush=True)


def fmt(value: float, unit: str) -> str:
    if unit == "jobs/s":
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def summary(values: list[float | None]) -> tuple[float, float, float] | None:
    ok = [v for v in values if v is not None]
    if not ok:
        return None
    return statistics.median(ok), min(ok), max(ok)


SCENARIOS = ("enqueue", "processing", "latency", "memory", "startup")


def row_order(row: Row) -> tuple[int, int]:
    body = BODIES.index(row.body) if row.body in BODIES else 0
    return SCENARIOS.index(row.scenario), body


def print_table(results: Results) -> None:
    header = (
        f"{'scenario':<10} {'body':<5} {'variant':<22} {'median':>10} {'min':>10} {'max':>10} "
        f"{'unit':<6} {'ratio':>6}  vs (same repeat)"
    )
    print(header)
    print("-" * len(header))
    last_group = None
    for row in sorted(results.rows.values(), key=row_order):
        group = (row.scenario, row.body if row.scenario == "processing" else "")
        if last_group is not None and group != last_group:
            print()
        last_group = group
        stats = summary(row.values)
        if stats is None:
            print(f"{row.scenario:<10} {row.body:<5} {row.variant:<22} {'FAILED':>10}")
            continue
        ratios = results.baseline_ratios(row)
        ratio = f"{statistics.median(ratios):6.2f}" if ratios else f"{'':>6}"
        vs = row.baseline or ""
        med, lo, hi = stats
        print(
            f"{row.scenario:<10} {row.body:<5} {row.variant:<22} {fmt(med, row.unit):>10} "
            f"{fmt(lo, row.unit):>10} {fmt(hi, row.unit):>10} {row.unit:<6} {ratio}  {vs}"
        )
    print()


#: Cross-row ratios worth reading (medians of per-repeat ratios); nothing is asserted.
COMPARISONS = [
    ("enqueue", "-", "flowd enqueue_bulk", "raw XADD pipelined"),
    ("enqueue", "-", "flowd enqueue", "raw XADD"),
    ("processing", "noop", "flowd c8", "raw 1 thread"),
    ("processing", "noop", "flowd c32", "raw 1 thread"),
    ("processing", "incr", "flowd c8", "raw 8 threads"),
    ("processing", "incr", "flowd c8", "dramatiq 8 threads"),
    ("processing", "incr", "flowd worker c8", "dramatiq 8 threads"),
    ("processing", "incr", "flowd worker c8", "celery threads 8"),
    ("processing", "incr", "flowd worker c8", "rq SimpleWorker"),
    ("processing", "incr", "flowd worker c8 x2", "flowd worker c8"),
    ("processing", "incr", "flowd worker c32 x2", "flowd worker c32"),
    ("processing", "noop", "flowd worker c8 x2", "flowd worker c8"),
    ("processing", "sleep", "flowd c8", "raw 8 threads"),
    ("processing", "sleep", "flowd worker c8", "dramatiq 8 threads"),
    ("processing", "sleep", "flowd worker c8", "celery threads 8"),
]


def comparisons(results: Results) -> list[dict[str, Any]]:
    out = []
    for scenario, body, a, b in COMPARISONS:
        row_a, row_b = results.get(scenario, body, a), results.get(scenario, body, b)
        if row_a is None or row_b is None:
            continue
        ratios = results.ratios(row_a, row_b)
        if ratios:
            out.append(
                {
                    "scenario": scenario,
                    "body": body,
                    "variant": a,
                    "versus": b,
                    "ratios": ratios,
                    "median": statistics.median(ratios),
                }
            )
    return out


def print_comparisons(items: list[dict[str, Any]]) -> None:
    print("Cross-row ratios (median of per-repeat ratios; min..max):")
    for item in items:
        r = item["ratios"]
        print(
            f"  {item['scenario']:<10} {item['body']:<5} {item['variant']:<20} / "
            f"{item['versus']:<20} {item['median']:6.2f}   ({min(r):.2f}..{max(r):.2f})"
        )
    print()


#: flowd's performance targets (README.rst, Performance): (what, row, versus, bound, kind).
#: kind "ratio>=": median per-repeat ratio row/versus at least bound; "max": the row's
#: median at most bound (ms); "flat": last RSS within bound MB of the first.
TARGETS: list[tuple[str, tuple[str, str, str], tuple[str, str, str] | None, float, str]] = [
    (
        "no-op jobs vs raw loop",
        ("processing", "noop", "flowd c8"),
        ("processing", "noop", "raw 1 thread"),
        0.5,
        "ratio>=",
    ),
    (
        "INCR jobs vs raw loop",
        ("processing", "incr", "flowd c8"),
        ("processing", "incr", "raw 1 thread"),
        0.9,
        "ratio>=",
    ),
    (
        "INCR jobs vs Dramatiq",
        ("processing", "incr", "flowd c8"),
        ("processing", "incr", "dramatiq 8 threads"),
        3.0,
        "ratio>=",
    ),
    (
        "bulk enqueue vs raw",
        ("enqueue", "-", "flowd enqueue_bulk"),
        ("enqueue", "-", "raw XADD pipelined"),
        0.9,
        "ratio>=",
    ),
    ("latency p50 (ms)", ("latency", "p50", "flowd c8"), None, 1.0, "max"),
    ("latency p99 (ms)", ("latency", "p99", "flowd c8"), None, 5.0, "max"),
]
#: RSS growth over the memory run that still counts as flat.
RSS_FLAT_MB = 5.0


def target_lines(results: Results) -> list[dict[str, Any]]:
    """One entry per target: the measured figure, the bound, met or missed."""
    out: list[dict[str, Any]] = []
    for what, key, versus, bound, kind in TARGETS:
        row = results.get(*key)
        figure: float | None = None
        if row is not None and kind == "ratio>=" and versus is not None:
            ratios = results.ratios(row, results.get(*versus))
            figure = statistics.median(ratios) if ratios else None
        elif row is not None:
            figure = (summary(row.values) or (None,))[0]
        met = figure is not None and (figure >= bound if kind == "ratio>=" else figure <= bound)
        out.append({"target": what, "figure": figure, "bound": bound, "kind": kind, "met": met})
    memory = [r for r in results.rows.values() if r.scenario == "memory"]
    if len(memory) == 2 and all(v is not None for r in memory for v in r.values):
        first, last = (r.values[0] for r in memory)
        assert first is not None and last is not None
        growth = last - first
        out.append(
            {
                "target": f"RSS growth over {memory[1].n:,} jobs (MB)",
                "figure": growth,
                "bound": RSS_FLAT_MB,
                "kind": "max",
                "met": growth <= RSS_FLAT_MB,
            }
        )
    return out


def print_targets(items: list[dict[str, Any]]) -> None:
    print("Targets (ratios: median of per-repeat ratios; latency and RSS: medians):")
    for item in items:
        figure = "FAILED" if item["figure"] is None else f"{item['figure']:.2f}"
        sign = ">=" if item["kind"] == "ratio>=" else "<="
        verdict = "met" if item["met"] else "MISSED"
        print(f"  {item['target']:<34} {figure:>8}  (target {sign} {item['bound']:g})  {verdict}")
    print()


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(ctx: Context) -> dict[str, Any]:
    info = ctx.client(0).info("server")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "hiredis": version_of("hiredis"),
        "hiredis_in_use": bool(redis.utils.HIREDIS_AVAILABLE),
        "redis_server": info["redis_version"],
        "redis_server_binary": ctx.server.binary,
        "flowd": flowd.__version__,
        "rq": version_of("rq"),
        "dramatiq": version_of("dramatiq"),
        "celery": version_of("celery"),
        "kombu": version_of("kombu"),
        "psutil": version_of("psutil"),
        "load_average_at_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        description="flowd vs raw redis-py vs rq, Dramatiq and Celery, on a private redis-server."
    )
    parser.add_argument(
        "--quick", action="store_true", help="small numbers: a 2-3 minute smoke run"
    )
    parser.add_argument("--jobs", type=int, help="N for the no-op and INCR bodies (10,000)")
    parser.add_argument("--sleep-jobs", type=int, help="N for the 5 ms sleep body (1,000)")
    parser.add_argument("--enqueue-jobs", type=int, help="N for the enqueue runs (10,000)")
    parser.add_argument("--repeat", type=int, help="interleaved repeats (3)")
    parser.add_argument("--latency-seconds", type=float, help="length of a latency run (10)")
    parser.add_argument("--latency-rate", type=int, help="jobs/s of the latency runs (500)")
    parser.add_argument("--rss-jobs", type=int, help="no-op jobs of the memory run (1,000,000)")
    parser.add_argument("--skip-peers", action="store_true", help="leave out rq, Dramatiq, Celery")
    parser.add_argument(
        "--targets",
        action="store_true",
        help="only the rows the performance targets name, then met/missed per target",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="results file (benchmarks/results-compare.json)"
    )
    args = parser.parse_args(argv)
    cfg = Config()
    if args.quick:
        cfg = Config(
            jobs=2_000,
            sleep_jobs=200,
            enqueue_jobs=2_000,
            repeat=1,
            latency_seconds=3.0,
            rss_first=10_000,
            rss_jobs=100_000,
        )
    for name in (
        "jobs",
        "sleep_jobs",
        "enqueue_jobs",
        "repeat",
        "latency_seconds",
        "latency_rate",
        "rss_jobs",
        "json",
    ):
        value = getattr(args, name)
        if value is not None:
            if name != "json" and value <= 0:
                parser.error(f"--{name.replace('_', '-')} must be positive")
            setattr(cfg, name, value)
    cfg.peers = not args.skip_peers
    cfg.targets = args.targets
    if cfg.rss_jobs < cfg.rss_first:
        cfg.rss_first = cfg.rss_jobs
    return cfg


@contextmanager
def private_server() -> Iterator[Context]:
    server = RedisServer()
    server.start()
    tmp = Path(tempfile.mkdtemp(prefix="flowd-bench-"))
    ctx = Context(server, tmp)
    try:
        yield ctx
    finally:
        ctx.close()
        server.close()


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    started = time.perf_counter()
    results = Results()
    with private_server() as ctx:
        for peer in PEERS:  # read by peer_*.py, here and in their worker processes
            os.environ[f"BENCH_{peer.upper()}_URL"] = ctx.url(DB[peer])
        env = environment(ctx)
        print(
            f"Redis {env['redis_server']} (private, port {ctx.server.port}) | Python "
            f"{env['python']} | redis-py {env['redis_py']} (hiredis {env['hiredis']}) | "
            f"flowd {env['flowd']} | rq {env['rq']} | dramatiq {env['dramatiq']} | "
            f"celery {env['celery']} | {env['cpu_count']} CPUs"
        )
        print(f"config: {asdict(cfg)}  (logs of worker processes: {ctx.tmp})\n", flush=True)
        for repeat in range(cfg.repeat):
            print(f"repeat {repeat + 1}/{cfg.repeat}", flush=True)
            run_enqueue(ctx, cfg, results, repeat)
            run_processing(ctx, cfg, results, repeat)
            run_latency(ctx, cfg, results, repeat)
        print("memory", flush=True)
        run_memory(ctx, cfg, results)
    elapsed = time.perf_counter() - started
    env["load_average_at_end"] = os.getloadavg()
    loads = [e["loadavg_1m"] for r in results.rows.values() for e in r.extra if "loadavg_1m" in e]
    if loads:
        env["loadavg_1m_during_runs"] = {
            "min": min(loads),
            "median": statistics.median(loads),
            "max": max(loads),
        }
    print(f"\n{cfg.repeat} interleaved repeats, {elapsed / 60:.1f} minutes; ratio = median of")
    print("per-repeat ratios to the row named under 'vs' (for latency and RSS, lower is better)")
    if loads:
        print(
            f"1-minute load average during the runs: {min(loads):.2f} .. {max(loads):.2f} "
            f"(median {statistics.median(loads):.2f}) on {env['cpu_count']} CPUs"
        )
    print()
    print_table(results)
    cross = comparisons(results)
    print_comparisons(cross)
    targets = target_lines(results)
    print_targets(targets)
    out = {
        "environment": env,
        "config": asdict(cfg),
        "sleep_seconds": SLEEP_SECONDS,
        "minutes": elapsed / 60,
        "rows": [
            {
                **asdict(row),
                "baseline_ratios": results.baseline_ratios(row),
                "median": (summary(row.values) or (None,))[0],
            }
            for row in results.rows.values()
        ],
        "comparisons": cross,
        "targets": targets,
    }
    Path(cfg.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {cfg.json}")
    failed = [r for r in results.rows.values() if any(v is None for v in r.values)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
