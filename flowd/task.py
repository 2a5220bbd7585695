"""Task: a stream entry paired with its typed job, and the job running on this thread."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

J = TypeVar("J")


@dataclass(frozen=True, slots=True)
class Task(Generic[J]):
    """What a worker receives: one stream entry and its decoded job.

    ``deliveries`` is 1 on the first delivery and grows each time the entry
    is delivered again (claimed after a failure or a crash). ``error`` is set
    only on the dead-letter path: the last failure or the decode error. For an
    entry that could not be decoded, ``job`` is ``None`` there.
    """

    id: str
    job: J
    deliveries: int
    stream: str
    fields: Mapping[bytes, bytes]
    error: str | None = None


#: The task the current thread's job runs (set by the worker loop around each job).
current_task_var: ContextVar[Task[Any] | None] = ContextVar("flowd_current_task", default=None)


def current_task() -> Task[Any] | None:
    """The :class:`Task` whose job runs on this thread now; None outside a job.

    Set by the worker thread around the job and its hooks. A thread that the
    job starts does not inherit it (threads start with an empty context).
    """
    return current_task_var.get()


class JobLogFilter(logging.Filter):
    """Adds ``flowd_stream``, ``flowd_job_id`` and ``flowd_delivery`` to records
    logged by a job (from its worker thread, while it runs).

    Attach it to a handler; it never drops a record. Records logged outside a
    job get none of the attributes, so a format string naming them needs
    ``defaults`` (``logging.Formatter(fmt, defaults={"flowd_job_id": "-"})``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task_var.get()
        if task is not None:
            record.flowd_stream = task.stream
            record.flowd_job_id = task.id
            record.flowd_delivery = task.deliveries
        return True
