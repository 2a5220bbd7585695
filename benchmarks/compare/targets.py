"""flowd's performance targets (README.rst, Performance): one met/missed line per target."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.compare.results import Results, summary

#: (what, row, versus, bound, kind). kind "ratio>=": median per-repeat ratio row/versus at
#: least bound; "max": the row's median at most bound (ms); "flat": last RSS within bound
#: MB of the first.
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
