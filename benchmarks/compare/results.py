"""The rows of a comparison: every repeat's value per (scenario, body, variant), and ratios."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


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


def summary(values: list[float | None]) -> tuple[float, float, float] | None:
    ok = [v for v in values if v is not None]
    if not ok:
        return None
    return statistics.median(ok), min(ok), max(ok)


def rows_json(results: Results) -> list[dict[str, Any]]:
    """Every row with its per-repeat baseline ratios and its median, for the JSON file."""
    return [
        {
            **asdict(row),
            "baseline_ratios": results.baseline_ratios(row),
            "median": (summary(row.values) or (None,))[0],
        }
        for row in results.rows.values()
    ]
