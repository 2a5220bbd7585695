"""A task's ``TaskResult``, from flowd's view of its job and the backend's records."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.utils.module_loading import import_string

from ....results import JobResult, JobStatus
from ._compat import Task, TaskError, TaskResult, TaskResultStatus
from .records import Attempts, TaskMessage

__all__ = ["django_status", "import_task", "task_result", "with_latest_run"]

# RETRYING is READY: the run failed and the job waits to run again, which is what the
# framework's READY says ("ready to be executed again"), not RUNNING.
_STATUS = {
    JobStatus.SCHEDULED: "READY",
    JobStatus.WAITING: "READY",
    JobStatus.RETRYING: "READY",
    JobStatus.RUNNING: "RUNNING",
    JobStatus.SUCCEEDED: "SUCCESSFUL",
    JobStatus.FAILED: "FAILED",
    JobStatus.DEAD: "FAILED",
    JobStatus.CANCELLED: "FAILED",
}


def django_status(status: JobStatus) -> Any:
    """The framework's ``TaskResultStatus`` of a flowd job status."""
    return getattr(TaskResultStatus, _STATUS[status])


def import_task(path: str) -> Any:
    """The task at ``path``.

    :raises ImportError: the path does not import (any more).
    :raises TypeError: what it names is not a task (its ``@task`` was removed).
    """
    found = import_string(path)
    if not isinstance(found, Task):
        raise TypeError(f"{path} is a {type(found).__name__}, not a task: is its @task gone?")
    return found


def _utc(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def build(
    task: Any,
    message: TaskMessage,
    status: Any,
    attempts: Attempts,
    *,
    finished_at: datetime | None = None,
    value: Any = None,
) -> Any:
    """A ``TaskResult`` of ``task`` with the message's arguments and these facts."""
    result = TaskResult(
        task=task,
        id=message.result_id,
        status=status,
        enqueued_at=message.enqueued_at,
        started_at=_utc(attempts.first_start_ms),
        finished_at=finished_at,
        last_attempted_at=_utc(attempts.last_start_ms),
        args=json.loads(message.args),
        kwargs=json.loads(message.kwargs),
        backend=message.backend,
        errors=[TaskError(exception_class_path=c, traceback=t) for c, t in attempts.errors],
        worker_ids=list(attempts.worker_ids),
    )
    if value is not None:
        object.__setattr__(result, "_return_value", value)
    return result


def task_result(task: Any, message: TaskMessage, job: JobResult, attempts: Attempts) -> Any:
    """The ``TaskResult`` of a task whose job flowd found as ``job``."""
    status = django_status(job.status)
    finished = job.finished_at if job.status.finished else None
    attempts = with_latest_run(attempts, job)
    return build(task, message, status, attempts, finished_at=finished, value=job.value)


def with_latest_run(attempts: Attempts, job: JobResult) -> Attempts:
    """``attempts`` with the job's latest run counted, from flowd's own record of it, when
    its start record is not written yet (a first attempt's goes in a batch: starts.py)."""
    if job.consumer is None or job.deliveries <= len(attempts.worker_ids):
        return attempts
    started = None if job.started_at is None else int(job.started_at.timestamp() * 1000)
    return Attempts(
        worker_ids=[*attempts.worker_ids, job.consumer],
        errors=attempts.errors,
        first_start_ms=attempts.first_start_ms if attempts.worker_ids else started,
        last_start_ms=started if started is not None else attempts.last_start_ms,
    )
