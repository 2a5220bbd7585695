"""Tracing: a request's span, the enqueue and the job's run in one trace, on the console.

Needs the SDK: ``pip install 'flowd-queue[opentelemetry]' opentelemetry-sdk``. Run
``python examples/tracing.py``: it enqueues one job inside a ``handle request``
span, runs it, and prints each span as JSON (the job's log line names its job too).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import flowd
from flowd.contrib.opentelemetry import TracingHooks

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
trace.set_tracer_provider(provider)

handler = logging.StreamHandler()
handler.addFilter(flowd.JobLogFilter())
handler.setFormatter(
    logging.Formatter("%(message)s [job %(flowd_job_id)s]", defaults={"flowd_job_id": "-"})
)
log = logging.getLogger("example")
log.addHandler(handler)
log.setLevel(logging.INFO)


@dataclass
class SendReceipt(flowd.Job):
    order: int


done = threading.Event()


def send(task: flowd.Task[SendReceipt]) -> None:
    log.info("receipt for order %d", task.job.order)
    done.set()


def main() -> None:
    client = redis.Redis.from_url(os.environ.get("FLOWD_REDIS_URL", "redis://localhost:6379/0"))
    producer = flowd.Producer(client, stream="receipts", tracing=True)
    with trace.get_tracer("example").start_as_current_span("handle request"):
        producer.enqueue(SendReceipt(order=42))
    queue = flowd.Queue(
        client,
        stream="receipts",
        group="mailers",
        job=SendReceipt,
        worker=send,
        hooks=[TracingHooks()],
    )
    with queue.run():
        done.wait(30)
    provider.shutdown()


if __name__ == "__main__":
    main()
