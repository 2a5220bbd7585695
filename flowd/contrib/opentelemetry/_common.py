"""What the producer and consumer sides share: attribute names and the trace fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context

from ..._redis.fields import TRACEPARENT_FIELD, TRACESTATE_FIELD
from ..._version import __version__

#: ``messaging.system``: flowd, not redis. What a span describes (the message layout,
#: deliveries, retries, dead letters) is flowd's; Redis is the server it runs on.
SYSTEM = "flowd"
#: The name of flowd's tracer (instrumentation scope).
SCOPE = "flowd"

MESSAGING_SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
MESSAGE_ID = "messaging.message.id"
GROUP = "messaging.consumer.group.name"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
BATCH_COUNT = "messaging.batch.message_count"
#: flowd's own: the run's delivery (1 for the first run), how the run ended, and
#: whether an enqueue went to the scheduled set.
DELIVERIES = "flowd.deliveries"
OUTCOME = "flowd.outcome"
SCHEDULED = "flowd.scheduled"

# The propagator's carrier keys and the reserved stream fields they travel in.
_CARRIED = (("traceparent", TRACEPARENT_FIELD), ("tracestate", TRACESTATE_FIELD))


def get_tracer(provider: Any = None) -> trace.Tracer:
    """flowd's tracer from ``provider``, else from the global provider (resolved when
    spans start, so a provider set after the hooks were made is used)."""
    return trace.get_tracer(SCOPE, __version__, tracer_provider=provider)


def trace_fields(context: Context | None = None) -> tuple[str, ...]:
    """The flat stream fields (name, value, ...) carrying ``context`` (default: the
    current one) through the global propagator: W3C trace context unless set otherwise."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    flat: list[str] = []
    for key, field in _CARRIED:
        value = carrier.get(key)
        if value:
            flat += (field.decode("ascii"), value)
    return tuple(flat)


def extract(fields: Mapping[Any, Any]) -> Context:
    """The context a message's trace fields carry (an empty one when it has none)."""
    carrier: dict[str, str] = {}
    for key, field in _CARRIED:
        value = fields.get(field)
        if value is None:
            value = fields.get(field.decode("ascii"))  # a decode_responses client's task
        if value is not None:
            carrier[key] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return propagate.extract(carrier) if carrier else Context()
