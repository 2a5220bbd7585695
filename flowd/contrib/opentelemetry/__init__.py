"""OpenTelemetry tracing for flowd: from the enqueue to the job's run.

Needs the extra: ``pip install 'flowd-queue[opentelemetry]'`` (the
``opentelemetry-api``; add the SDK and an exporter to send spans somewhere).
Without it, flowd imports nothing of OpenTelemetry.

::

    producer = flowd.Producer(client, stream="emails", tracing=True)
    queue = flowd.Queue(client, ..., hooks=[TracingHooks()])

- The producer starts a PRODUCER span ``send <stream>`` per ``enqueue``, and one
  per ``enqueue_bulk`` call whose context every message of the call carries
  (one span per batch, no link per message). The span's W3C trace context
  goes into the reserved fields ``flowd:traceparent`` and
  ``flowd:tracestate`` (written through the global propagator), which retries
  and the scheduled set of delayed jobs keep with the job's own fields.
- :class:`TracingHooks` starts a CONSUMER span ``process <stream>`` per run,
  whose parent is that context. A run after the first links to the first run's
  span, found in memory or, for a retry run by another process, in a key of the
  stream's slot (``{stream}:trace:<group>:<id>``, kept ``link_ttl`` seconds).

Attributes follow the messaging semantic conventions: ``messaging.system`` is
``flowd``, ``messaging.destination.name`` the stream,
``messaging.message.id``, ``messaging.consumer.group.name``,
``messaging.operation.type`` (``send``, ``process``, or ``settle`` for a
dead-letter span), and flowd's ``flowd.deliveries`` and ``flowd.outcome``
(``success``, ``failure``, ``retry``, ``give-up``, or ``dead-letter``). A
failure or a give-up records the exception and sets the status to ERROR.
"""

from __future__ import annotations

from ._hooks import TracingHooks

__all__ = ["TracingHooks"]
