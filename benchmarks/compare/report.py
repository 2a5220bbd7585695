"""The printed table and the cross-row ratios (medians of per-repeat ratios)."""

from __future__ import annotations

import statistics
from typing import Any

from bench_bodies import BODIES

from benchmarks.compare.results import Results, Row, summary

SCENARIOS = ("enqueue", "processing", "latency", "memory", "startup")


def fmt(value: float, unit: str) -> str:
    if unit == "jobs/s":
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def row_order(row: Row) -> tuple[int, int]:
    order = (*BODIES, "sleep20", "cpu")  # the last two: rows of --targets only
    body = order.index(row.body) if row.body in order else 0
    return SCENARIOS.index(row.scenario), body


def print_table(results: Results) -> None:
    header = (
        f"{'scenario':<10} {'body':<7} {'variant':<22} {'median':>10} {'min':>10} {'max':>10} "
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
            print(f"{row.scenario:<10} {row.body:<7} {row.variant:<22} {'FAILED':>10}")
            continue
        ratios = results.baseline_ratios(row)
        ratio = f"{statistics.median(ratios):6.2f}" if ratios else f"{'':>6}"
        vs = row.baseline or ""
        med, lo, hi = stats
        print(
            f"{row.scenario:<10} {row.body:<7} {row.variant:<22} {fmt(med, row.unit):>10} "
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
