"""The throughput chart's geometry: bars per minute, drawn as inline SVG by the template.

Computed here, so the page needs no script and no external resource.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .._redis.throughput import Minute

WIDTH = 720
HEIGHT = 160
#: Room left of the plot for the axis labels, and below it.
LEFT = 48
BOTTOM = 20


@dataclass(frozen=True, slots=True)
class Bar:
    """One minute: a processed bar with a failed bar stacked on it (SVG user units)."""

    x: float
    width: float
    processed_y: float
    processed_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    """Everything the template draws."""

    width: int
    height: int
    left: int
    plot_height: int
    top_label: str
    bars: list[Bar]
    processed: int
    failed: int


def _nice(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value`` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def build(minutes: Sequence[Minute]) -> Chart:
    """Bars for these minutes (oldest first), scaled to the busiest one."""
    plot_height = HEIGHT - BOTTOM
    top = _nice(max((m.processed + m.failed for m in minutes), default=0))
    slot = (WIDTH - LEFT) / max(len(minutes), 1)
    bars = []
    for index, minute in enumerate(minutes):
        processed_h = plot_height * minute.processed / top
        failed_h = plot_height * minute.failed / top
        at = datetime.fromtimestamp(minute.start, UTC).strftime("%H:%M")
        bars.append(
            Bar(
                x=round(LEFT + index * slot + 1, 2),
                width=round(max(slot - 2, 1), 2),
                processed_y=round(plot_height - processed_h, 2),
                processed_height=round(processed_h, 2),
                failed_y=round(plot_height - processed_h - failed_h, 2),
                failed_height=round(failed_h, 2),
                title=f"{at} UTC: {minute.processed} processed, {minute.failed} failed",
            )
        )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        plot_height=plot_height,
        top_label=f"{top}/min",
        bars=bars,
        processed=sum(m.processed for m in minutes),
        failed=sum(m.failed for m in minutes),
    )
