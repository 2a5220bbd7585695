"""The environment a run records: machine, versions of every contender, load averages."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
from typing import Any

import redis

import flowd
from benchmarks.compare.results import Results
from benchmarks.compare.server import Context


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


def run_loads(results: Results) -> list[float]:
    """The 1-minute load average recorded after every successful run."""
    return [e["loadavg_1m"] for r in results.rows.values() for e in r.extra if "loadavg_1m" in e]


def load_summary(loads: list[float]) -> dict[str, float]:
    return {"min": min(loads), "median": statistics.median(loads), "max": max(loads)}
