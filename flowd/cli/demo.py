"""``flowd demo``: a self-contained tour of enqueue, processing, recovery and dead letters."""

from __future__ import annotations

import dataclasses
import secrets
import sys
import time
from typing import Any

import redis

from .._redis.keys import dead_letter_stream, key_prefix
from .._redis.urls import redact_url
from ..claimer import Claimer
from ..job import Job
from ..producer import Producer
from ..queue import Queue
from ..task import Task
from .embedded import RedisServer, find_redis_server

#: Messages the "crashed" consumer reads and never acks.
CRASHED_BATCH = 20


@dataclasses.dataclass
class Thumbnail(Job):
    """The demo's job: pretend to render a thumbnail."""

    image_id: int
    width: int = 128
    poison: bool = False


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(url: str | None, jobs: int, *, keep: bool = False) -> int:
    """Run the tour against ``url``, or a private redis-server started for it.

    Every key the tour made is deleted at the end, unless ``keep`` (which needs
    ``url``: the private server goes away with its data).

    :returns: the exit status.
    """
    if jobs < 1:
        _say("flowd demo: --jobs must be at least 1")
        return 2
    if keep and url is None:
        _say("flowd demo: --keep needs --url (or FLOWD_REDIS_URL): the private server is removed")
        return 2
    server = None
    if url is None:
        try:
            binary = find_redis_server()
        except FileNotFoundError as exc:
            _say(f"flowd demo: {exc}")
            return 3
        server = RedisServer(binary=binary)
        server.start()
        url = server.url
        _say(f"started a private redis-server ({binary}) on {url}")
    else:
        _say(f"using Redis at {redact_url(url)}")
    client = redis.Redis.from_url(url)
    stream = f"flowd-demo-{secrets.token_hex(3)}"
    try:
        return _tour(client, stream, jobs)
    finally:
        if keep:
            _say(
                f"kept {stream} and its dead letters in {dead_letter_stream(stream)}; "
                f"try: flowd info {stream} --url ...; flowd dlq list {stream} --url ..."
            )
        else:
            # the stream and every key derived from it ({stream}:dead, :errors:..., :moved:...)
            derived = list(client.scan_iter(match=f"{key_prefix(stream)}:*", count=1000))
            client.delete(stream, *derived)
            _say(f"removed {stream} and its dead letters (--keep keeps them)")
        client.close()
        if server is not None:
            server.close()
            _say("stopped the private redis-server and removed its files")


def _tour(client: Any, stream: str, jobs: int) -> int:
    producer = Producer(client, stream=stream)
    started = time.perf_counter()
    producer.enqueue_bulk(Thumbnail(image_id=i) for i in range(jobs))
    enqueue_rate = jobs / (time.perf_counter() - started)
    _say(f"1. enqueued {jobs} jobs with enqueue_bulk ({enqueue_rate:,.0f} jobs/s)")

    producer.enqueue(Thumbnail(image_id=-1, poison=True))
    client.xadd(stream, {"width": "not-a-number"})  # no image_id: cannot be decoded
    client.xgroup_create(stream, "thumbs", id="0")
    crashed = client.xreadgroup("thumbs", "crashed-worker", {stream: ">"}, count=CRASHED_BATCH)
    _say(
        f"2. consumer 'crashed-worker' read {len(crashed[0][1])} jobs and died without "
        "acking them; one poison job and one unreadable message wait in the stream"
    )

    recovered: list[int] = []
    dead: list[str] = []

    def render(task: Task[Thumbnail]) -> None:
        if task.job.poison:
            raise RuntimeError("corrupt image")
        if task.deliveries > 1:
            recovered.append(task.job.image_id)

    def on_dead(task: Task[Any]) -> None:
        dead.append(task.error or "")

    queue = Queue(
        client,
        stream=stream,
        group="thumbs",
        job=Thumbnail,
        worker=render,
        concurrency=16,
        claimer=Claimer(min_idle_time=0.5, max_retries=2, dlq_worker=on_dead, interval=0.1),
    )
    _say("3. processing with 16 threads and a claimer (min_idle_time 0.5s, max_retries 2)")
    started = time.perf_counter()
    handle = queue.run()
    expected = jobs  # the poison job and the unreadable one end as dead letters instead
    fresh = jobs - len(crashed[0][1])  # what the reader alone can process
    first_pass = 0.0
    tty = sys.stdout.isatty()
    while True:
        stats = handle.stats()
        if not first_pass and stats.processed >= fresh:
            first_pass = time.perf_counter() - started
        if tty:
            print(
                f"\r   processed {stats.processed:>8}/{expected}  retried {stats.retried}  "
                f"dead {stats.dead_lettered}",
                end="",
                flush=True,
            )
        if stats.processed >= expected and stats.dead_lettered >= 2:
            break
        if time.perf_counter() - started > 120:
            _say("\nflowd demo: gave up waiting after 120 s")
            handle.stop(timeout=5)
            return 1
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    clean = handle.stop(timeout=10)
    stats = handle.stats()
    if tty:
        print()
    pending = client.xpending(stream, "thumbs")["pending"]
    _say(
        f"4. recovered {len(recovered)} of the crashed consumer's jobs "
        f"(delivered again after min_idle_time)"
    )
    _say(f"5. dead-lettered {len(dead)} messages (unreadable, or out of retries):")
    for reason in dead:
        _say(f"   - {reason}")
    _say(
        "\nsummary\n"
        f"   jobs processed   {stats.processed}: {fresh} new ones in {first_pass:.2f}s "
        f"({fresh / max(first_pass, 1e-9):,.0f} jobs/s), all done after {elapsed:.2f}s\n"
        f"   retried runs     {stats.retried} (runs of a message delivered before: "
        "the recovered jobs, the poison job)\n"
        f"   dead letters     {stats.dead_lettered} (moved to {dead_letter_stream(stream)})\n"
        f"   still pending    {pending}\n"
        f"   clean stop       {clean}"
    )
    return 0 if clean and pending == 0 and len(recovered) >= len(crashed[0][1]) else 1
