"""Scenario 1, enqueue: flowd ``enqueue`` / ``enqueue_bulk`` vs one XADD per job / pipelined
XADD, and rq ``enqueue`` / ``enqueue_many``, Dramatiq ``send``, Celery ``delay``."""

from __future__ import annotations

from benchmarks.compare.adapter_celery import enqueue_celery
from benchmarks.compare.adapter_dramatiq import enqueue_dramatiq
from benchmarks.compare.adapter_flowd import enqueue_flowd
from benchmarks.compare.adapter_raw import enqueue_raw
from benchmarks.compare.adapter_rq import enqueue_rq
from benchmarks.compare.config import Config
from benchmarks.compare.results import Results
from benchmarks.compare.rounds import Variant, attempt, rotated
from benchmarks.compare.server import Context

#: The enqueue rows the targets name (--targets).
TARGET_ENQUEUE = ("raw XADD pipelined", "flowd enqueue_bulk")


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


def warm_up(ctx: Context, variants: list[Variant]) -> None:
    """Each enqueue path once on a few jobs (connections, imports, caches); not recorded."""
    for variant in variants:
        variant.run(ctx, 200)


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
