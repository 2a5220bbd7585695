"""Scenario 2, processing, per body (no-op, one INCR, a 5 ms sleep).

Contenders: the raw loops of DESIGN.md (one thread; eight threads, each its own consumer),
flowd in this process (concurrency 8 and 32), ``flowd worker`` subprocesses (1 and 2
processes), rq SimpleWorker (burst), Dramatiq (1 process, 8 threads), Celery (threads
pool, 8). Every contender gets N jobs enqueued before its clock starts; in-process
contenders start the clock when they start, worker subprocesses at their start marker
(``process``), and the clock stops when the last job's effect is visible (``streams`` and
each adapter's completion check).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench_bodies import BODIES

from benchmarks.compare.adapter_celery import celery_worker
from benchmarks.compare.adapter_dramatiq import dramatiq_worker
from benchmarks.compare.adapter_flowd import flowd_inprocess, flowd_worker
from benchmarks.compare.adapter_raw import raw_variant
from benchmarks.compare.adapter_rq import rq_worker
from benchmarks.compare.config import Config
from benchmarks.compare.results import Results
from benchmarks.compare.rounds import attempt, rotated
from benchmarks.compare.server import Context

#: The processing rows of each body the targets name (--targets): flowd with its defaults
#: (adaptive concurrency) against the raw loop, Dramatiq, the ideal rate of 32 sleeping
#: threads, and flowd at fixed thread counts ("fixed cN": adaptive concurrency off).
TARGET_ROWS = {
    "noop": ("raw 1 thread", "flowd c8"),
    "incr": ("raw 1 thread", "flowd c8", "flowd c32", "dramatiq 8 threads"),
    "sleep20": ("flowd c32",),
    "cpu": ("flowd c8", "flowd fixed c1", "flowd fixed c2", "flowd fixed c4", "flowd fixed c8"),
}
#: Jobs per run of the target bodies that N (--jobs) does not size: long enough (about
#: 5 s) for adaptive concurrency to probe, as a real backlog would be.
TARGET_JOBS = {"sleep20": 8_000, "cpu": 5_000}


#: Fixed thread counts (adaptive concurrency off) of the CPU-bound target rows.
FIXED = (1, 2, 4, 8)


def processing_variants() -> list[tuple[str, str | None, Callable[..., Any], str | None]]:
    base = "raw 1 thread"
    return [
        (base, None, raw_variant(1), None),
        ("raw 8 threads", base, raw_variant(8), None),
        ("flowd c8", base, flowd_inprocess(8), None),
        ("flowd c32", base, flowd_inprocess(32), None),
        *[(f"flowd fixed c{c}", base, flowd_inprocess(c, adaptive=False), None) for c in FIXED],
        ("flowd worker c8", base, flowd_worker(8, 1), None),
        ("flowd worker c8 x2", base, flowd_worker(8, 2), None),
        ("flowd worker c32", base, flowd_worker(32, 1), None),
        ("flowd worker c32 x2", base, flowd_worker(32, 2), None),
        ("rq SimpleWorker", base, rq_worker, "rq"),
        ("dramatiq 8 threads", base, dramatiq_worker, "dramatiq"),
        ("celery threads 8", base, celery_worker, "celery"),
    ]


def run_processing(ctx: Context, cfg: Config, results: Results, repeat: int) -> None:
    every = [v for v in processing_variants() if cfg.peers or v[3] is None]
    bodies: tuple[str, ...] = tuple(TARGET_ROWS) if cfg.targets else BODIES
    for body in bodies:
        n = cfg.sleep_jobs if body == "sleep" else TARGET_JOBS.get(body, cfg.jobs)
        if cfg.targets:
            variants = [v for v in every if v[0] in TARGET_ROWS[body]]
        else:  # the fixed rows only measure what adaptive concurrency is up against
            variants = [v for v in every if not v[0].startswith("flowd fixed")]
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
