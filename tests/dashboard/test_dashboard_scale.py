"""The dashboard on a big queue: 1,000,000 entries and 100,000 dead letters.

Behaviour only (the timings are in benchmarks/bench_dashboard.py): every page
renders with its pagination, each page sends a bounded number of commands and
never reads a list without a COUNT, and paging keeps the server's memory flat.
"""

from __future__ import annotations

import io
import re
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from flowd.dashboard import Dashboard
from tests.dashboard.dashboard_server import fill_big_queue
from tests.redis_server import RedisServer

STREAM = "emails"
ENTRIES = 1_000_000
DEAD = 100_000
#: Redis commands one page may send at most (a few per group, list and chart minute).
MAX_COMMANDS_PER_PAGE = 200


@pytest.fixture(scope="module")
def big() -> Iterator[redis.Redis]:
    server = RedisServer()
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        fill_big_queue(client, STREAM, ENTRIES, DEAD)
        yield client
    finally:
        client.close()
        server.close()


def get(app: Dashboard, path: str, query: str = "") -> tuple[str, str]:
    started: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "HTTP_HOST": "127.0.0.1",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
    }
    body = b"".join(app(environ, lambda status, headers: started.append(status)))
    return started[0], body.decode()


def commands_of(client: redis.Redis, render: Any) -> list[list[str]]:
    """The commands the server ran during ``render()`` (its slow log, at threshold 0)."""
    client.config_set("slowlog-max-len", 100_000)
    client.config_set("slowlog-log-slower-than", 0)
    client.slowlog_reset()
    try:
        render()
    finally:
        client.config_set("slowlog-log-slower-than", 10_000)
    entries = client.execute_command("SLOWLOG", "GET", 100_000)
    commands = [[a.decode("utf-8", "replace") for a in entry[3]] for entry in entries]
    return [c for c in commands if c[0].upper() not in ("CONFIG", "SLOWLOG")]


def _small_hash(key: str) -> bool:
    """Hashes whose size does not grow with the queue: one scheduled job, the schedules."""
    return key.endswith(":schedules") or ":scheduled:" in key


def _bounded_index_range(command: list[str]) -> bool:
    try:
        start, stop = int(command[2]), int(command[3])
    except (IndexError, ValueError):
        return False
    return 0 <= start <= stop and stop - start <= 1000


def unbounded(commands: list[list[str]]) -> list[list[str]]:
    """Commands whose work grows with the size of a stream, set or hash."""
    bad = []
    for command in commands:
        name = command[0].upper()
        upper = [a.upper() for a in command]
        if name in ("XRANGE", "XREVRANGE") and "COUNT" not in upper:
            bad.append(command)
        elif name == "XPENDING" and len(command) > 3 and len(command) < 6:
            bad.append(command)  # the extended form needs start, end and count
        elif name in ("KEYS", "SMEMBERS", "LRANGE"):
            bad.append(command)
        elif name in ("HGETALL", "HKEYS", "HVALS") and not _small_hash(command[1]):
            bad.append(command)
        elif name == "ZRANGE" and "LIMIT" not in upper and not _bounded_index_range(command):
            bad.append(command)
        elif name == "XINFO" and "FULL" in upper:
            bad.append(command)
    return bad


@pytest.mark.slow
def test_every_page_of_a_big_queue_renders_with_bounded_work(big: redis.Redis) -> None:
    app = Dashboard(big, [STREAM])
    pages: dict[str, str] = {}

    def render() -> None:
        pages["overview"] = get(app, "/")[1]
        pages["stream"] = get(app, "/stream", f"name={STREAM}")[1]

    # When the overview and the stream page are rendered
    commands = commands_of(big, render)

    # Then they show the big numbers, with pagination
    assert f">{ENTRIES}</td>" in pages["overview"] and f">{DEAD}</td>" in pages["overview"]
    stream_page = pages["stream"]
    assert '<span class="count">100000</span>' in stream_page
    assert len(re.findall(r'<tr class="letter"', stream_page)) == 50
    assert "Older &raquo;" in stream_page and "Next page &raquo;" in stream_page
    assert stream_page.count("TimeoutError: slow API") == 50
    # And they did a bounded amount of work (the log did see their reads)
    assert {"XLEN", "XREVRANGE", "XPENDING", "HMGET"} <= {c[0].upper() for c in commands}
    assert unbounded(commands) == [], unbounded(commands)
    assert len(commands) <= 2 * MAX_COMMANDS_PER_PAGE, len(commands)


@pytest.mark.slow
def test_paging_deep_into_the_dead_letters_keeps_memory_flat(big: redis.Redis) -> None:
    app = Dashboard(big, [STREAM])
    query = f"name={STREAM}"
    sizes: list[int] = []
    tracemalloc.start()
    try:
        seen: set[str] = set()
        for page in range(40):
            status, body = get(app, "/stream", query)
            assert status.startswith("200"), body
            ids = re.findall(r'<tr class="letter" id="dead-([\d-]+)"', body)
            assert len(ids) == 50 and not seen.intersection(ids)
            seen.update(ids)
            older = re.search(r'href="/stream\?([^"]+)#dead">Older', body)
            assert older is not None
            query = older[1].replace("&amp;", "&")
            if page in (9, 39):
                sizes.append(tracemalloc.get_traced_memory()[0])
        # And each page, however deep, runs the same bounded commands
        deep = commands_of(big, lambda: get(app, "/stream", query))
    finally:
        tracemalloc.stop()
    assert unbounded(deep) == [] and len(deep) <= MAX_COMMANDS_PER_PAGE
    # Then memory after 40 pages is what it was after 10: nothing accumulates
    assert sizes[1] - sizes[0] < 1_000_000, sizes
