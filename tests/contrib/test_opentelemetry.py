"""OpenTelemetry: the trace goes from the enqueue into the job's run, retries link to the
first run, failures are recorded, and without the extra nothing of it is imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import flowd
from flowd.contrib.opentelemetry import TracingHooks
from flowd.dashboard import Dashboard
from tests.dashboard.dashboard_server import http, serving
from tests.helpers import GROUP, Numbered, QueueFactory, wait_until

ROOT = Path(__file__).resolve().parents[2]
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The in-memory exporter of the global tracer provider (set once for the process:
    the producer traces through the global provider)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def test_a_job_enqueued_in_a_span_runs_in_a_child_of_the_producer_span(
    client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
    spans: InMemorySpanExporter,
) -> None:
    # Given a job enqueued inside a request's span, by a tracing producer
    tracer = trace.get_tracer("tests")
    seen: list[flowd.Task[Any]] = []

    def work(task: flowd.Task[Numbered]) -> None:
        with tracer.start_as_current_span("inside the job"):
            seen.append(task)

    with tracer.start_as_current_span("request"):
        msg_id = flowd.Producer(client, stream, tracing=True).enqueue(Numbered(1))
    # When a queue with TracingHooks runs it
    with make_queue(work, hooks=[TracingHooks()]).run():
        wait_until(lambda: named(spans, "process"))
    (request,) = named(spans, "request")
    (send,) = named(spans, "send")
    (process,) = named(spans, "process")
    (inside,) = named(spans, "inside the job")
    # Then the producer span is the request's child, and the run is the producer span's
    assert send.kind is SpanKind.PRODUCER and parent_id(send) == span_id(request)
    assert process.kind is SpanKind.CONSUMER and parent_id(process) == span_id(send)
    assert trace_id(process) == trace_id(request)
    # And the job's own spans are children of the run
    assert parent_id(inside) == span_id(process)
    assert send.attributes is not None and process.attributes is not None
    assert send.attributes["messaging.message.id"] == msg_id
    assert send.attributes["messaging.operation.type"] == "send"
    assert dict(process.attributes) == {
        "messaging.system": "flowd",
        "messaging.destination.name": stream,
        "messaging.message.id": msg_id,
        "messaging.consumer.group.name": GROUP,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "flowd.deliveries": 1,
        "flowd.outcome": "success",
    }
    # And the reserved fields travel in the message, beside the job, which decodes as sent
    assert seen[0].job == Numbered(1)
    assert b"flowd:traceparent" in seen[0].fields


def test_bulk_enqueue_is_one_span_whose_context_every_message_carries(
    client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
    spans: InMemorySpanExporter,
) -> None:
    # Given three jobs enqueued in one bulk call
    flowd.Producer(client, stream, tracing=True).enqueue_bulk(Numbered(n) for n in range(3))
    # When they run
    with make_queue(hooks=[TracingHooks()]).run():
        wait_until(lambda: len(named(spans, "process")) == 3)
    # Then one producer span counts them, and each run is its child
    (send,) = named(spans, "send")
    assert send.attributes is not None and send.attributes["messaging.batch.message_count"] == 3
    assert {parent_id(p) for p in named(spans, "process")} == {span_id(send)}


@pytest.mark.parametrize("delay", [0.05, 1.2], ids=["kept-pending", "rescheduled"])
def test_a_retried_job_has_two_runs_the_second_linked_to_the_first(
    client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
    spans: InMemorySpanExporter,
    delay: float,
) -> None:
    # Given a job that asks for a retry on its first run (a short delay keeps the
    # message pending; a long one re-adds it under a new id through the scheduled set)
    def work(task: flowd.Task[Numbered]) -> None:
        if task.deliveries == 1:
            raise flowd.Retry(delay=delay)

    flowd.Producer(client, stream, tracing=True).enqueue(Numbered(1))
    queue = make_queue(
        work, hooks=[TracingHooks()], claimer=flowd.Claimer(min_idle_time=1, interval=0.1)
    )
    # When it runs twice
    with queue.run() as handle:
        wait_until(lambda: handle.stats().processed == 1, timeout=15)
    first, second = sorted(named(spans, "process"), key=lambda s: s.start_time or 0)
    (send,) = named(spans, "send")
    # Then both runs are children of the producer span, the second linked to the first
    assert parent_id(first) == parent_id(second) == span_id(send)
    assert [link.context.span_id for link in second.links] == [span_id(first)]
    assert first.links == () or list(first.links) == []
    assert first.attributes is not None and second.attributes is not None
    assert (first.attributes["flowd.outcome"], first.attributes["flowd.deliveries"]) == ("retry", 1)
    assert (second.attributes["flowd.outcome"], second.attributes["flowd.deliveries"]) == (
        "success",
        2,
    )
    assert first.status.status_code is StatusCode.UNSET
    # (a rescheduled retry is a new entry: the link was found through flowd:retry-of)
    same_entry = (
        first.attributes["messaging.message.id"] == second.attributes["messaging.message.id"]
    )
    assert same_entry is (delay < 1)


def test_a_retry_in_another_process_links_to_the_first_run_through_redis(
    client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
    spans: InMemorySpanExporter,
) -> None:
    # Given a job whose first run failed under one consumer (its hooks then gone)
    failed = threading.Event()

    def fail_once(task: flowd.Task[Numbered]) -> None:
        if task.deliveries == 1:
            failed.set()
            raise RuntimeError("first run fails")

    flowd.Producer(client, stream, tracing=True).enqueue(Numbered(1))
    first_queue = make_queue(fail_once, hooks=[TracingHooks()], consumer="one")
    with first_queue.run():
        wait_until(failed.is_set)
        wait_until(lambda: named(spans, "process"))
    # When another consumer, with hooks of its own, claims and runs it again
    claimer = flowd.Claimer(min_idle_time=0.3, interval=0.1)
    second_queue = make_queue(fail_once, hooks=[TracingHooks()], claimer=claimer, consumer="two")
    with second_queue.run() as handle:
        wait_until(lambda: handle.stats().processed == 1, timeout=15)
    first, second = sorted(named(spans, "process"), key=lambda s: s.start_time or 0)
    # Then the second run links to the first, found in Redis
    assert [link.context.span_id for link in second.links] == [span_id(first)]
    assert trace_id(first) == trace_id(second)


def test_a_failing_jobs_span_has_error_status_and_the_exception(
    client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
    spans: InMemorySpanExporter,
) -> None:
    # Given a job that raises
    def work(task: flowd.Task[Numbered]) -> None:
        raise ValueError("no such customer")

    flowd.Producer(client, stream, tracing=True).enqueue(Numbered(1))
    # When it runs
    with make_queue(work, hooks=[TracingHooks()]).run():
        wait_until(lambda: named(spans, "process"))
    (process,) = named(spans, "process")
    # Then its span is in error, with the exception recorded
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "ValueError: no such customer"
    assert process.attributes is not None and process.attributes["flowd.outcome"] == "failure"
    (event,) = process.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "no such customer"


def test_give_up_records_the_run_and_a_dead_letter_span_below_it(
    client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
    spans: InMemorySpanExporter,
) -> None:
    # Given a job that gives up
    def work(task: flowd.Task[Numbered]) -> None:
        raise flowd.GiveUp("card declined")

    flowd.Producer(client, stream, tracing=True).enqueue(Numbered(1))
    # When it runs, with a claimer whose dead-letter stream takes it
    with make_queue(work, hooks=[TracingHooks()], claimer=flowd.Claimer()).run():
        wait_until(lambda: named(spans, "dead-letter"))
    (process,) = named(spans, "process")
    (dead,) = named(spans, "dead-letter")
    # Then the run ended in give-up (in error), and the dead-letter span is its child
    assert process.attributes is not None and process.attributes["flowd.outcome"] == "give-up"
    assert process.status.status_code is StatusCode.ERROR
    assert parent_id(dead) == span_id(process)
    assert dead.attributes is not None
    assert dead.attributes["flowd.outcome"] == "dead-letter"
    assert dead.attributes["messaging.operation.type"] == "settle"
    assert dead.status.status_code is StatusCode.ERROR


def test_a_delayed_job_keeps_the_trace(
    client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
    spans: InMemorySpanExporter,
) -> None:
    # Given a job enqueued with a delay inside a span (it waits in the scheduled set)
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("request"):
        job_id = flowd.Producer(client, stream, tracing=True).enqueue(Numbered(1), delay=0.3)
    assert job_id.startswith("s-")
    # When the queue moves it into the stream and runs it
    with make_queue(hooks=[TracingHooks()]).run():
        wait_until(lambda: named(spans, "process"), timeout=15)
    (request,) = named(spans, "request")
    (send,) = named(spans, "send")
    (process,) = named(spans, "process")
    # Then its run is still the producer span's child, in the request's trace
    assert send.attributes is not None and send.attributes["flowd.scheduled"] is True
    assert parent_id(process) == span_id(send)
    assert trace_id(process) == trace_id(request)


def test_a_message_without_trace_fields_runs_in_a_root_span(
    client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
    spans: InMemorySpanExporter,
) -> None:
    # Given a job enqueued by a producer without tracing
    flowd.Producer(client, stream).enqueue(Numbered(1))
    # When a traced queue runs it
    with make_queue(hooks=[TracingHooks()]).run() as handle:
        wait_until(lambda: handle.stats().processed == 1)
    # Then its run is a span of a trace of its own
    (process,) = named(spans, "process")
    assert process.parent is None


# Run in a virtualenv without the extra: it sees every package of the test
# environment but opentelemetry's.
_WITHOUT_OPENTELEMETRY = textwrap.dedent(
    """
    import importlib.util
    import sys

    assert importlib.util.find_spec("opentelemetry") is None, "the extra is installed"

    import dataclasses
    import threading

    import redis

    import flowd

    assert "flowd.contrib.opentelemetry" not in sys.modules

    @dataclasses.dataclass
    class Numbered(flowd.Job):
        n: int

    client = redis.Redis.from_url(sys.argv[1])
    stream = sys.argv[2]
    try:
        flowd.Producer(client, stream, tracing=True)
    except flowd.ConfigurationError as exc:
        assert "flowd-queue[opentelemetry]" in str(exc), exc
    else:
        raise AssertionError("tracing=True without OpenTelemetry did not raise")
    flowd.Producer(client, stream).enqueue(Numbered(1))
    done = threading.Event()
    queue = flowd.Queue(
        client, stream=stream, group="g", job=Numbered, worker=lambda task: done.set()
    )
    with queue.run():
        assert done.wait(10)
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
    assert not loaded, loaded
    assert "flowd.contrib.opentelemetry" not in sys.modules
    print("ran without opentelemetry")
    """
)


def venv_without_opentelemetry(where: Path) -> Path:
    """A new virtualenv whose site-packages links every package of this one but
    opentelemetry's (and flowd, taken from the checkout): its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    (site,) = (where / "lib").glob("python3*/site-packages")
    ours = Path(next(p for p in sys.path if p.endswith("site-packages")))
    for entry in ours.iterdir():
        name = entry.name.lower()
        if name.startswith(("opentelemetry", "flowd", "__editable__")) or name.endswith(".pth"):
            continue
        (site / entry.name).symlink_to(entry)
    (site / "checkout.pth").write_text(f"{ROOT}\n", encoding="utf-8")
    return where / "bin" / "python"


def test_without_opentelemetry_the_queue_runs_and_flowd_imports_none_of_it(
    redis_url: str, stream: str, tmp_path: Path
) -> None:
    # Given a virtualenv without the opentelemetry extra
    python = venv_without_opentelemetry(tmp_path / "venv")
    # When it imports flowd, runs a queue, and asks a producer for tracing
    result = subprocess.run(
        [str(python), "-c", _WITHOUT_OPENTELEMETRY, redis_url, stream],
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then the job ran, tracing=True named the extra, and no opentelemetry module loaded
    assert result.returncode == 0, result.stderr
    assert "ran without opentelemetry" in result.stdout


def test_the_job_page_and_results_name_a_traced_jobs_trace(
    client: redis.Redis,
    stream: str,
    make_queue: QueueFactory,
    spans: InMemorySpanExporter,
) -> None:
    # Given a job that succeeds and one that gives up, enqueued in a request's span
    def work(task: flowd.Task[Numbered]) -> int:
        if task.job.n == 2:
            raise flowd.GiveUp("card declined")
        return task.job.n

    tracer = trace.get_tracer("tests")
    producer = flowd.Producer(client, stream, tracing=True)
    with tracer.start_as_current_span("request"):
        ok_id, dead_id = producer.enqueue(Numbered(1)), producer.enqueue(Numbered(2))
    (request,) = named(spans, "request")
    expected = f"{trace_id(request):032x}"
    untraced_id = flowd.Producer(client, stream).enqueue(Numbered(3))
    results = flowd.Results(client, stream)
    # Then while they wait, the lookup reads the trace from the stream entry
    waiting = results.get(ok_id)
    assert waiting is not None and waiting.status is flowd.JobStatus.WAITING
    assert waiting.trace_id == expected
    # And once they ended, from their records (the stream entries trimmed away)
    with make_queue(work, hooks=[TracingHooks()], claimer=flowd.Claimer(), result_ttl=600).run():
        wait_until(lambda: len(named(spans, "process")) == 3 and named(spans, "dead-letter"))
        wait_until(lambda: (r := results.get(untraced_id)) is not None and r.finished_at)
    client.xtrim(stream, maxlen=0)
    done, dead = results.get(ok_id), results.get(dead_id)
    assert done is not None and done.status is flowd.JobStatus.SUCCEEDED
    assert dead is not None and dead.status is flowd.JobStatus.DEAD
    assert done.trace_id == dead.trace_id == expected
    untraced = results.get(untraced_id)
    assert untraced is not None and untraced.trace_id is None
    # And the dashboard's job page shows it; an untraced job's page has no trace row
    with serving(Dashboard(client, [stream])) as base:
        _, _, body = http(f"{base}/job?stream={stream}&id={dead_id}")
        _, _, plain = http(f"{base}/job?stream={stream}&id={untraced_id}")
    assert f'<td class="trace-id mono">{expected}</td>' in body
    assert "trace-id" not in plain
