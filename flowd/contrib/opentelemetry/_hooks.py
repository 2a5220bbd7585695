"""The consumer side: a CONSUMER span per run, child of the enqueue's context."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from contextvars import Token
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from ..._redis.fields import RETRY_OF_FIELD
from ..._redis.keys import trace_link_key
from ..._redis.timeutil import Seconds, to_seconds
from ...errors import GiveUp, Retry
from ...hooks import Hooks
from ...task import Task
from . import _common as c

__all__ = ["TracingHooks"]

logger = logging.getLogger(__name__)

#: Messages whose first run's span this process remembers (a retry here needs no read).
_MEMORY = 10_000


@dataclass(slots=True)
class _Run:
    stream: str
    msg_id: str
    span: trace.Span
    token: Token[Context]
    first: SpanContext  # the first run's span: this one's, or the one it links to


class TracingHooks(Hooks):
    """Traces each run of a job: ``Queue(..., hooks=[TracingHooks()])``.

    Each run is a CONSUMER span ``process <stream>`` whose parent is the context
    the message carries (``Producer(tracing=True)``), current while the job runs,
    so the job's own spans are its children. A run of a message that ran before
    links to the span of its first run. A dead-lettered message gets a short
    ``dead-letter <stream>`` span, a child of the run that sent it there.

    :param tracer_provider: where spans go; the global provider by default.
    :param client: the Redis client where the first run's span is kept while its
        message may run again (a retry can run in another process); by default the
        queue's own client, taken when the queue starts.
    :param link_ttl: seconds that record is kept (seconds or a timedelta): make it
        longer than a message may wait for its retry.
    """

    def __init__(
        self, *, tracer_provider: Any = None, client: Any = None, link_ttl: Seconds = 86400.0
    ) -> None:
        self.tracer = c.get_tracer(tracer_provider)
        self.client = client
        self.link_ttl = to_seconds(link_ttl, "link_ttl")
        self._groups: dict[str, str] = {}
        self._local = threading.local()
        self._lock = threading.Lock()
        #: (stream, message id) -> (first run's span, monotonic expiry), oldest first.
        self._firsts: OrderedDict[tuple[str, str], tuple[SpanContext, float]] = OrderedDict()

    def on_start(self, queue: Any) -> None:
        for stream in queue.streams:
            self._groups[stream] = queue.group
        if self.client is None:
            self.client = queue.client

    # -- runs --------------------------------------------------------------------

    def before_job(self, task: Task[Any]) -> None:
        stale: _Run | None = getattr(self._local, "run", None)
        if stale is not None:  # its end hook never ran, or failed midway
            self._local.run = None
            otel_context.detach(stale.token)
            stale.span.end()
        group = self._groups.get(task.stream)
        attributes: dict[str, Any] = {
            c.MESSAGING_SYSTEM: c.SYSTEM,
            c.DESTINATION: task.stream,
            c.MESSAGE_ID: task.id,
            c.OPERATION_TYPE: "process",
            c.OPERATION_NAME: "process",
            c.DELIVERIES: task.deliveries,
        }
        if group is not None:
            attributes[c.GROUP] = group
        parent = c.extract(task.fields)
        first = self._first_run(task) if task.deliveries > 1 else None
        span = self.tracer.start_span(
            f"process {task.stream}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=[Link(first)] if first is not None else None,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        self._local.run = _Run(task.stream, task.id, span, token, first or span.get_span_context())

    def after_success(self, task: Task[Any], duration: float) -> None:
        self._end(task, "success")

    def after_failure(self, task: Task[Any], exc: BaseException, duration: float) -> None:
        run = self._end(task, "failure", exc)
        if run is not None:
            self._remember(task, run.first)

    def after_retry(self, task: Task[Any], exc: Retry, duration: float) -> None:
        run = self._end(task, "retry")
        if run is not None:
            self._remember(task, run.first)

    def after_give_up(self, task: Task[Any], exc: GiveUp, duration: float) -> None:
        self._end(task, "give-up", exc)

    def on_dead_letter(self, task: Task[Any]) -> None:
        # Right after a run on this thread: a child of that run; else (the claimer's
        # sweep of a message past its retries) a child of the message's context.
        last = getattr(self._local, "last", None)
        self._local.last = None
        if last is not None and last[0] == (task.stream, task.id):
            parent = trace.set_span_in_context(trace.NonRecordingSpan(last[1]))
        else:
            parent = c.extract(task.fields)
        with self.tracer.start_as_current_span(
            f"dead-letter {task.stream}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                c.MESSAGING_SYSTEM: c.SYSTEM,
                c.DESTINATION: task.stream,
                c.MESSAGE_ID: task.id,
                c.OPERATION_TYPE: "settle",
                c.OPERATION_NAME: "dead-letter",
                c.DELIVERIES: task.deliveries,
                c.OUTCOME: "dead-letter",
                **({c.GROUP: g} if (g := self._groups.get(task.stream)) else {}),
            },
        ) as span:
            span.set_status(Status(StatusCode.ERROR, task.error))
        self._forget(task)

    def _end(self, task: Task[Any], outcome: str, exc: BaseException | None = None) -> _Run | None:
        run: _Run | None = getattr(self._local, "run", None)
        if run is None or (run.stream, run.msg_id) != (task.stream, task.id):
            return None  # before_job did not start this run's span
        self._local.run = None
        span = run.span
        span.set_attribute(c.OUTCOME, outcome)
        if exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        try:
            otel_context.detach(run.token)
        finally:
            span.end()
        self._local.last = ((task.stream, task.id), span.get_span_context())
        return run

    # -- the first run's span ------------------------------------------------------

    def _remember(self, task: Task[Any], first: SpanContext) -> None:
        """Keep the first run's span while the message may run again (in memory, and in
        Redis for a retry in another process)."""
        with self._lock:
            self._firsts[task.stream, task.id] = (first, time.monotonic() + self.link_ttl)
            self._firsts.move_to_end((task.stream, task.id))
            while len(self._firsts) > _MEMORY:
                self._firsts.popitem(last=False)
        if self.client is None:
            return
        value = f"{first.trace_id:032x}-{first.span_id:016x}-{int(first.trace_flags):02x}"
        key = trace_link_key(task.stream, self._groups.get(task.stream, ""), task.id)
        try:
            self.client.set(key, value, px=max(int(self.link_ttl * 1000), 1))
        except redis.exceptions.RedisError as exc:
            logger.warning("could not keep the span of %s for its retry's link: %s", task.id, exc)

    def _first_run(self, task: Task[Any]) -> SpanContext | None:
        """The span of the message's first run: by its id (a run claimed again), else by
        the id its retry was scheduled from (``flowd:retry-of``)."""
        ids = [task.id]
        fields: Mapping[Any, Any] = task.fields
        retry_of = fields.get(RETRY_OF_FIELD)
        if retry_of is None:
            retry_of = fields.get(RETRY_OF_FIELD.decode())  # a decode_responses client's task
        if retry_of is not None:
            ids.append(retry_of.decode() if isinstance(retry_of, bytes) else str(retry_of))
        now = time.monotonic()
        with self._lock:
            for msg_id in ids:
                known = self._firsts.get((task.stream, msg_id))
                if known is not None and known[1] > now:
                    return known[0]
        if self.client is None:
            return None
        group = self._groups.get(task.stream, "")
        try:
            values = self.client.mget([trace_link_key(task.stream, group, i) for i in ids])
        except redis.exceptions.RedisError as exc:
            logger.warning("could not read the first run's span of %s: %s", task.id, exc)
            return None
        for value in values:
            if value is not None:
                return _span_context(value.decode() if isinstance(value, bytes) else value)
        return None

    def _forget(self, task: Task[Any]) -> None:
        with self._lock:
            self._firsts.pop((task.stream, task.id), None)


def _span_context(value: str) -> SpanContext | None:
    try:
        trace_id, span_id, flags = (int(part, 16) for part in value.split("-"))
    except ValueError:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
