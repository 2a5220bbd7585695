"""A cron job: process a queue's backlog, then exit.

Run it from cron (or a Kubernetes CronJob, or systemd timer) every few minutes::

    */5 * * * *  FLOWD_REDIS_URL=redis://localhost:6379/0 python examples/cron_drain.py

``--seed N`` first enqueues N sample invoices, so the script shows something
on an empty Redis. The consumer name is fixed: a run that was killed leaves
its unfinished messages pending under that name, and the next run processes
them first. Messages of other consumers idle longer than ``min_idle_time``
are reclaimed too. SIGTERM stops reading; running jobs finish.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass

import redis

import flowd


@dataclass
class Invoice(flowd.Job):
    customer: str
    amount_cents: int


def bill(task: flowd.Task[Invoice]) -> None:
    # Returning acks the message; raising leaves it pending for a later run.
    print(f"billed {task.job.customer}: {task.job.amount_cents / 100:.2f}", flush=True)


def gave_up(task: flowd.Task[Invoice]) -> None:
    print(f"gave up on {task.id} after {task.deliveries} deliveries: {task.error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="enqueue N sample invoices first")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    client = redis.Redis.from_url(os.environ.get("FLOWD_REDIS_URL", "redis://localhost:6379/0"))
    if args.seed:
        flowd.Producer(client, "invoices").enqueue_bulk(
            Invoice(customer=f"customer-{i}", amount_cents=1000 + i) for i in range(args.seed)
        )

    queue = flowd.Queue(
        client,
        stream="invoices",
        group="billing",
        job=Invoice,
        worker=bill,
        concurrency=4,
        claimer=flowd.Claimer(min_idle_time=300, max_retries=3, dlq_worker=gave_up),
        consumer="cron-billing",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    processed = queue.drain(timeout=args.timeout, stop=stop)
    print(f"processed {processed} invoices")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
