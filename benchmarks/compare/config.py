"""The settings of one comparison run (``bench_compare.py`` fills them from its options)."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.compare import HERE


@dataclass
class Config:
    jobs: int = 10_000
    sleep_jobs: int = 1_000
    enqueue_jobs: int = 10_000
    repeat: int = 3
    latency_rate: int = 500
    latency_seconds: float = 10.0
    rss_first: int = 10_000
    rss_jobs: int = 1_000_000
    rss_chunk: int = 10_000
    peers: bool = True
    targets: bool = False  # only the rows the performance targets name
    json: str = str(HERE / "results-compare.json")  # ignored by git (results*.json)


def quick() -> Config:
    """``--quick``: a smoke run of a couple of minutes (explicit options still win)."""
    return Config(
        jobs=2_000,
        sleep_jobs=200,
        enqueue_jobs=2_000,
        repeat=1,
        latency_seconds=3.0,
        rss_first=10_000,
        rss_jobs=100_000,
    )
