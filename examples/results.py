"""Job results: what a worker returned, read back by the code that enqueued the job.

Run it with a Redis at hand::

    FLOWD_REDIS_URL=redis://localhost:6379/0 python examples/results.py

It enqueues three thumbnails to make (one of them delayed by a second) and one
that cannot be made, looks at where they are, then runs the queue in this
process with ``result_ttl`` and waits for each result: the worker's return
value, decoded back into its dataclass, or the reason a job was given up.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis

import flowd


@dataclass
class MakeThumbnail(flowd.Job):
    image_id: int
    width: int


@dataclass
class Thumbnail:
    """What the worker returns: kept as JSON (the datetime as epoch seconds)."""

    url: str
    width: int
    height: int
    made_at: datetime


def make(task: flowd.Task[MakeThumbnail]) -> Thumbnail:
    job = task.job
    if job.width <= 0:
        raise flowd.GiveUp(f"width must be positive, not {job.width}")
    return Thumbnail(
        url=f"https://cdn.example.com/{job.image_id}-{job.width}.jpg",
        width=job.width,
        height=job.width * 3 // 4,
        made_at=datetime.now(UTC),
    )


def main() -> int:
    client = redis.Redis.from_url(os.environ.get("FLOWD_REDIS_URL", "redis://localhost:6379/0"))
    producer = flowd.Producer(client, stream="thumbnails")
    ids = producer.enqueue_bulk([MakeThumbnail(1, 640), MakeThumbnail(2, 320)])
    ids.append(producer.enqueue(MakeThumbnail(3, 160), delay=1))  # keeps its id when it moves
    bad = producer.enqueue(MakeThumbnail(4, 0))

    results = flowd.Results(client, "thumbnails")
    before = [results.get(job_id) for job_id in ids]
    print("before any worker runs:", ", ".join(r.status.value for r in before if r is not None))
    try:
        results.wait(bad, timeout=0.2)
    except flowd.ResultTimeout as exc:
        print(f"not yet: {exc}")
    print("an id Redis never handed out:", results.get("1-0"))

    queue = flowd.Queue(
        client,
        stream="thumbnails",
        group="thumbnailers",
        job=MakeThumbnail,
        worker=make,
        result_ttl=timedelta(hours=1),  # keep each result for an hour
    )
    with queue.run():
        for job_id in ids:
            result = results.wait(job_id, timeout=30, type=Thumbnail)
            thumb: Thumbnail = result.value
            print(
                f"{result.status.value}: image {thumb.url} ({thumb.width}x{thumb.height}), "
                f"run {result.deliveries} by {result.consumer}"
            )
        failed = results.wait(bad, timeout=30)
        print(f"{failed.status.value}: {failed.error} (dead letter {failed.dead_letter_id})")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
