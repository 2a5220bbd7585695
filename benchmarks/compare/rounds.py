"""One repeat's turns: contenders, the rotation of their order, and one recorded attempt."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.compare.results import Results
from benchmarks.compare.server import Context


@dataclass
class Variant:
    """One contender of a scenario: ``run(ctx, n)`` returns its value (and details)."""

    name: str
    baseline: str | None
    run: Callable[[Context, int], tuple[float, dict[str, Any]]]
    peer: str | None = None


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
