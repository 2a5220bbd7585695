"""flowd's performance targets (README.rst, Performance): one met/missed line per target."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.compare.results import Results, Row, summary

Key = tuple[str, str, str]
#: The fixed thread counts the CPU-bound row is held against (the best of them).
FIXED_CPU: list[Key] = [("processing", "cpu", f"flowd fixed c{c}") for c in (1, 2, 4, 8)]
#: The ideal rate of time.sleep(0.02) jobs on 32 threads.
SLEEP20_IDEAL = 32 / 0.02

#: (what, row, versus, bound, kind). kind "ratio>=": median per-repeat ratio row/versus at
#: least bound; "ideal>=": the row's median over the number ``versus`` at least bound;
#: "best>=": median per-repeat ratio of row to the best of the rows ``versus`` at least
#: bound; "max": the row's median at most bound (ms); "flat": last RSS within bound
#: MB of the first.
TARGETS: list[tuple[str, Key, Key | list[Key] | float | None, float, str]] = [
    (
        "no-op jobs vs raw loop",
        ("processing", "noop", "flowd c8"),
        ("processing", "noop", "raw 1 thread"),
        0.8,
        "ratio>=",
    ),
    (
        "INCR jobs c8 vs raw loop",
        ("processing", "incr", "flowd c8"),
        ("processing", "incr", "raw 1 thread"),
        1.0,
        "ratio>=",
    ),
    (
        "INCR jobs c32 vs raw loop",
        ("processing", "incr", "flowd c32"),
        ("processing", "incr", "raw 1 thread"),
        1.0,
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
        "sleep(0.02) c32 vs 1,600 jobs/s",
        ("processing", "sleep20", "flowd c32"),
        SLEEP20_IDEAL,
        0.9,
        "ideal>=",
    ),
    (
        "CPU-bound c8 vs best fixed count",
        ("processing", "cpu", "flowd c8"),
        FIXED_CPU,
        0.9,
        "best>=",
    ),
    (
        "bulk enqueue vs raw",
        ("enqueue", "-", "flowd enqueue_bulk"),
        ("enqueue", "-", "raw XADD pipelined"),
        1.0,
        "ratio>=",
    ),
    ("latency p50 (ms)", ("latency", "p50", "flowd c8"), None, 1.0, "max"),
    ("latency p99 (ms)", ("latency", "p99", "flowd c8"), None, 5.0, "max"),
]
#: RSS growth over the memory run that still counts as flat.
RSS_FLAT_MB = 5.0


def _figure(
    results: Results, row: Row, versus: Key | list[Key] | float | None, kind: str
) -> float | None:
    """The measured figure of one target (None: a row it needs failed or is missing)."""
    if kind == "ratio>=" and isinstance(versus, tuple):
        ratios = results.ratios(row, results.get(*versus))
        return statistics.median(ratios) if ratios else None
    if kind == "best>=" and isinstance(versus, list):
        others = [results.get(*key) for key in versus]
        best: list[float] = []
        for i, value in enumerate(row.values):
            fixed = [o.values[i] for o in others if o is not None and i < len(o.values)]
            if value is not None and fixed and all(f is not None for f in fixed):
                best.append(value / max(f for f in fixed if f is not None))
        return statistics.median(best) if best else None
    median = (summary(row.values) or (None,))[0]
    if kind == "ideal>=" and isinstance(versus, float):
        return None if median is None else median / versus
    return median


def target_lines(results: Results) -> list[dict[str, Any]]:
    """One entry per target: the measured figure, the bound, met or missed."""
    out: list[dict[str, Any]] = []
    for what, key, versus, bound, kind in TARGETS:
        row = results.get(*key)
        figure = None if row is None else _figure(results, row, versus, kind)
        met = figure is not None and (figure <= bound if kind == "max" else figure >= bound)
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
        sign = "<=" if item["kind"] == "max" else ">="
        verdict = "met" if item["met"] else "MISSED"
        print(f"  {item['target']:<34} {figure:>8}  (target {sign} {item['bound']:g})  {verdict}")
    print()
