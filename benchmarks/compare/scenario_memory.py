"""Scenario 4, memory: RSS of one ``flowd worker`` after 10,000 and after ``--rss-jobs`` jobs.

Jobs are enqueued in bulk chunks whenever the backlog is small, so the stream stays bounded
by the queue's own housekeeping; the RSS is also kept every 5% of the way.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import psutil
from bench_app import BenchJob

import flowd
from benchmarks.compare import ROOT
from benchmarks.compare.adapter_flowd import worker_argv
from benchmarks.compare.config import Config
from benchmarks.compare.process import bench_env, stop_process
from benchmarks.compare.results import Results
from benchmarks.compare.server import DB, Context, unique
from benchmarks.compare.streams import group_progress


def memory_run(ctx: Context, cfg: Config) -> dict[str, Any]:
    client, stream = ctx.client(DB["flowd"]), unique("bench-rss")
    producer = flowd.Producer(client, stream)
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    argv = worker_argv(ctx.url(DB["flowd"]))
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
