"""flowd's own fields in stream entries (names start with ``flowd:``; never part of a Job)."""

from __future__ import annotations

from collections.abc import Mapping

#: Runs of the job done before its entry was (re)scheduled by a retry.
RUNS_FIELD = b"flowd:runs"
#: The consumer group whose retry re-added the entry.
GROUP_FIELD = b"flowd:group"
#: The id the retry script re-added the entry for. Only that script writes it, so
#: ``flowd:group`` and ``flowd:runs`` are believed only beside it: another program's
#: ``flowd:group`` field must not make a group ack a job it never ran.
RETRY_OF_FIELD = b"flowd:retry-of"
#: The W3C trace context of the enqueue (``Producer(tracing=True)``): the consumer's
#: span continues that trace. Retries and the scheduled set copy them with the rest.
TRACEPARENT_FIELD = b"flowd:traceparent"
TRACESTATE_FIELD = b"flowd:tracestate"
#: The job's deadline (``enqueue(expires=...)``), in ms since the epoch: a run that has
#: not started by then is not started. Retries and the scheduled set copy it too.
EXPIRES_FIELD = b"flowd:expires"


def traceparent_of(fields: Mapping[bytes, bytes]) -> str | None:
    """The entry's W3C ``traceparent`` (as text), or None when it was enqueued untraced."""
    raw = fields.get(TRACEPARENT_FIELD)
    return None if raw is None else raw.decode("ascii", "replace")


def trace_id_of(traceparent: object) -> str | None:
    """The trace id (32 hex digits) in a ``traceparent`` value, or None if it has none."""
    if not isinstance(traceparent, str):
        return None
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    try:
        int(parts[1], 16)
    except ValueError:
        return None
    return parts[1].lower()


def prior_runs(fields: Mapping[bytes, bytes]) -> int:
    """Runs done before the entry was (re)scheduled: its ``flowd:runs`` field, else 0."""
    raw = fields.get(RUNS_FIELD)
    if raw is None or RETRY_OF_FIELD not in fields:
        return 0
    try:
        return max(int(raw), 0)
    except ValueError:
        return 0


def other_group(fields: Mapping[bytes, bytes], group: bytes) -> bool:
    """True for an entry re-added by another group's retry: this group has run it already."""
    owner = fields.get(GROUP_FIELD)
    return owner is not None and owner != group and RETRY_OF_FIELD in fields
