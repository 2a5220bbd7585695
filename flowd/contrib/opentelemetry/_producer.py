"""The producer side: a PRODUCER span per enqueue, its context in the message."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from . import _common as c

R = TypeVar("R")


class ProducerTracing:
    """What ``Producer(tracing=True)`` holds: it wraps each enqueue call in a span and
    gives the fields that carry that span's context into each message."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.tracer = c.get_tracer()
        #: The trace fields of the enqueue span running now (one inject per call,
        #: however many jobs a bulk call writes).
        self._fields: ContextVar[tuple[str, ...] | None] = ContextVar(
            "flowd_trace_fields", default=None
        )

    def fields(self) -> tuple[str, ...]:
        """The trace fields to append to a message being encoded now."""
        fields = self._fields.get()
        return c.trace_fields() if fields is None else fields

    @contextmanager
    def _span(self, scheduled: bool) -> Iterator[trace.Span]:
        attributes: dict[str, Any] = {
            c.MESSAGING_SYSTEM: c.SYSTEM,
            c.DESTINATION: self.stream,
            c.OPERATION_TYPE: "send",
            c.OPERATION_NAME: "send",
            c.SCHEDULED: scheduled,
        }
        with self.tracer.start_as_current_span(
            f"send {self.stream}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            token = self._fields.set(c.trace_fields())
            try:
                yield span
            finally:
                self._fields.reset(token)

    def enqueue(self, send: Callable[..., str], job: Any, *args: Any) -> str:
        """Run one enqueue (``send(job, *args)``, args starting with delay and at) in its
        span; the span gets the job's id."""
        with self._span(scheduled=args[0] is not None or args[1] is not None) as span:
            msg_id = send(job, *args)
            span.set_attribute(c.MESSAGE_ID, msg_id)
            return msg_id

    def enqueue_bulk(self, send: Callable[..., list[str]], jobs: Any, *args: Any) -> list[str]:
        """Run one bulk enqueue in one span, whose context every message carries."""
        with self._span(scheduled=args[0] is not None or args[1] is not None) as span:
            ids = send(jobs, *args)
            span.set_attribute(c.BATCH_COUNT, len(ids))
            return ids
