"""Dashboard page times on a big queue (1,000,000 entries, 100,000 dead letters).

Starts a private redis-server, fills one queue with a Lua loop, serves the
dashboard with waitress on loopback, and times real HTTP GETs of the
overview, the stream page, a dead-letter page deep in the DLQ, and the second
page of pending messages. The same pages of a small queue (100 entries, 10
dead letters) on the same server are the baseline: the ratio big/small shows
that a page's cost does not grow with the queue. Also prints the process's
RSS before and after paging through the DLQ (it should stay flat).

    python benchmarks/bench_dashboard.py [--entries N] [--dead N] [--repeat N]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import redis

from flowd.dashboard import Dashboard
from tests.dashboard.dashboard_server import fill_big_queue, http, serving
from tests.redis_server import RedisServer


def timed(url: str, repeat: int) -> tuple[float, float]:
    """(median, max) milliseconds of ``repeat`` GETs of ``url``."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        status, _, body = http(url)
        times.append((time.perf_counter() - started) * 1000)
        assert status == 200, body[:300]
    return statistics.median(times), max(times)


def deep_dead_page(base: str, stream: str, pages: int) -> str:
    """The URL of dead-letter page ``pages`` (following "Older" links)."""
    url = f"{base}/stream?name={stream}"
    for _ in range(pages):
        body = http(url)[2]
        older = re.search(r'href="(/stream\?[^"]+)#dead">Older', body)
        assert older is not None
        url = base + older[1].replace("&amp;", "&")
    return url


def pending_page_2(base: str, stream: str) -> str:
    body = http(f"{base}/stream?name={stream}")[2]
    found = re.search(r'href="(/stream\?[^"]+)#pending">Next page', body)
    assert found is not None
    return base + found[1].replace("&amp;", "&")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--deep", type=int, default=100, help="DLQ page to time (default 100)")
    parser.add_argument(
        "--streams", type=int, default=100, help="small queues on one overview (default 100)"
    )
    args = parser.parse_args()

    server = RedisServer()
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        started = time.perf_counter()
        fill_big_queue(client, "big", args.entries, args.dead)
        fill_big_queue(client, "small", 100, 10, pending=60)
        print(
            f"filled {args.entries:,} entries and {args.dead:,} dead letters in "
            f"{time.perf_counter() - started:.1f} s (redis {client.info()['redis_version']})"
        )
        process = psutil.Process()
        for name, streams in (("big", ["big"]), ("small", ["small"])):
            with serving(Dashboard(client, streams)) as base:
                overview = timed(base + "/", args.repeat)
                page = timed(f"{base}/stream?name={name}", args.repeat)
                pending = timed(pending_page_2(base, name), args.repeat)
                if name == "big":
                    rss_before = process.memory_info().rss
                    deep = timed(deep_dead_page(base, name, args.deep), args.repeat)
                    rss_after = process.memory_info().rss
                    big = (overview, page, pending)
                    print(
                        f"RSS while paging {args.deep} DLQ pages: {rss_before / 2**20:.1f} MiB "
                        f"-> {rss_after / 2**20:.1f} MiB"
                    )
                    print(
                        f"big DLQ page {args.deep}: median {deep[0]:6.1f} ms, max {deep[1]:6.1f} ms"
                    )
                else:
                    small = (overview, page, pending)
        many = [f"many-{i}" for i in range(args.streams)]
        for name in many:
            fill_big_queue(client, name, 10, 2, pending=5)
        with serving(Dashboard(client, many)) as base:
            wide = timed(base + "/", max(3, args.repeat // 4))
        print(f"overview of {args.streams} queues: median {wide[0]:6.1f} ms, max {wide[1]:6.1f} ms")
        for label, b, s in zip(("overview", "stream page", "pending p.2"), big, small, strict=True):
            print(
                f"{label:<12} big: median {b[0]:6.1f} ms, max {b[1]:6.1f} ms | small: median "
                f"{s[0]:6.1f} ms | big/small {b[0] / s[0]:.2f}"
            )
    finally:
        client.close()
        server.close()


if __name__ == "__main__":
    main()
