"""The job page: one job's state (over :class:`flowd.Results`), ready to show."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..results import JobResult, JobStatus, Results
from .data import MAX_VALUE


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as the page shows it: the result, its value as JSON text (cut if long),
    and the cursor of the stream page's dead-letter list that starts at its dead letter."""

    result: JobResult
    #: The value as indented JSON; None when there is none to show.
    value: str | None
    #: False for a success whose value its queue did not keep (no ``result_ttl``).
    value_kept: bool
    #: ``dead_before`` of the stream page whose first row is the job's dead letter.
    dead_before: str | None


def find_job(client: Any, stream: str, job_id: str) -> JobView | None:
    """The job ``job_id`` of ``stream``, or None when Redis knows nothing of it."""
    result = Results(client, stream).get(job_id)
    if result is None:
        return None
    # Only a success's record has a finish time (and holds the value).
    kept = result.status is not JobStatus.SUCCEEDED or result.finished_at is not None
    value = None
    if result.status is JobStatus.SUCCEEDED and kept:
        value = json.dumps(result.value, indent=2, ensure_ascii=False)
        if len(value) > MAX_VALUE:
            value = value[:MAX_VALUE] + f"... ({len(value)} characters)"
    return JobView(result, value, kept, _after(result.dead_letter_id))


def _after(msg_id: str | None) -> str | None:
    """The stream id just after ``msg_id``: the dead-letter list shows ids before it."""
    if msg_id is None:
        return None
    ms, sep, seq = msg_id.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        return None
    return f"{ms}-{int(seq) + 1}"
