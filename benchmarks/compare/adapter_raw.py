"""The raw redis-py baselines of DESIGN.md: XADD (one by one, pipelined) and the raw loops."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from bench_bodies import make_body
from bench_enqueue import raw_bulk, raw_single
from bench_process import raw_loop, raw_threads

from benchmarks.compare.server import DB, Context, unique
from benchmarks.compare.streams import bench_fields, check_xlen, fill_stream
from benchmarks.compare.timing import timed_rate


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
