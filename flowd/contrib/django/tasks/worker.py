"""Running tasks: one flowd Queue per Django queue, whose worker imports each task by
its path and runs it as the framework says (context, coroutines, signals)."""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from ....errors import GiveUp, TimeLimitExceeded
from ....queue import Queue
from ....task import Task as FlowdTask
from .. import _with_db_cleanup
from . import records
from ._compat import (
    TaskContext,
    TaskResultStatus,
    exception_traceback,
    module_path,
    plain_json,
    signals,
)
from ._compat import task_backends as _task_backends
from .backend import FlowdBackend
from .options import GROUP
from .results import build, import_task
from .starts import StartBatch

__all__ = ["TaskRunner", "backend_queues", "flowd_backends", "queue_from_environ"]

#: The environment variable that names the ``alias:queue`` of a ``--processes`` child.
TASK_QUEUE_ENV = "FLOWD_DJANGO_TASK_QUEUE"


class TaskRunner:
    """The flowd worker of one task stream: one call runs one attempt of one task."""

    def __init__(self, backend: FlowdBackend, stream: str) -> None:
        self.backend = backend
        self.stream = stream
        #: The queue that runs this worker: its consumer name is the attempt's worker id.
        self.queue: Queue[records.TaskMessage] | None = None
        self.starts = StartBatch(backend.client)

    def __repr__(self) -> str:
        return f"<TaskRunner {self.stream}>"

    def _start(self, job: FlowdTask[records.TaskMessage]) -> records.Attempts:
        """Record the attempt's start; every record so far. A first attempt's record goes
        with others' (see starts.py): it has no earlier attempts to read."""
        worker = self.queue.consumer if self.queue is not None else "unknown"
        result_id, ttl_ms = job.job.result_id, self.backend.key_ttl_ms
        if job.deliveries > 1:
            self.starts.flush()
            return records.start(
                self.backend.client, self.stream, job.id, result_id, worker, ttl_ms
            )
        at_ms = records.now_ms()
        self.starts.add(
            records.start_call(self.stream, job.id, result_id, worker, ttl_ms, at_ms, False)
        )
        return records.Attempts([worker], [], at_ms, at_ms)

    def _record_error(self, message: records.TaskMessage, exc: BaseException) -> tuple[str, str]:
        error = (module_path(type(exc)), exception_traceback(exc))
        self.starts.flush()  # the attempt's start first (it sets the list's expiry)
        self.backend.client.rpush(
            records.attempts_key(self.stream, message.result_id), records.error_record(*error)
        )
        return error

    def __call__(self, job: FlowdTask[records.TaskMessage]) -> object:
        message = job.job
        attempts = self._start(job)
        try:
            task = import_task(message.task)
        except (ImportError, TypeError) as exc:
            # A path that cannot run now never will: dead-letter it, with the reason.
            reason = f"task {message.task!r} cannot run: {exc}"
            give_up = GiveUp(reason)
            give_up.__cause__ = exc
            self._record_error(message, give_up)
            raise give_up from exc
        result = build(task, message, TaskResultStatus.RUNNING, attempts)
        signals.task_started.send(type(self.backend), task_result=result)
        try:
            value = self._run(task, result)
        except (Exception, TimeLimitExceeded) as exc:
            error = self._record_error(message, exc)
            # Past MAX_RETRIES (or given up) the job is dead-lettered: the task FAILED.
            retries = self.backend.flowd_options.max_retries
            final = isinstance(exc, GiveUp) or job.deliveries > retries
            status = TaskResultStatus.FAILED if final else TaskResultStatus.READY
            self._finish(task, message, status, attempts, error=error)
            raise
        self._finish(task, message, TaskResultStatus.SUCCESSFUL, attempts, value=value)
        return value

    def _run(self, task: Any, result: Any) -> Any:
        args = list(result.args)
        if task.takes_context:
            args.insert(0, TaskContext(task_result=result))
        if inspect.iscoroutinefunction(task.func):
            # The worker thread's own event loop, for the one coroutine.
            value = asyncio.run(task.func(*args, **result.kwargs))
        else:
            value = task.func(*args, **result.kwargs)
        # As the framework keeps it: JSON types (a value with none fails the run).
        return plain_json(value)

    def _finish(
        self,
        task: Any,
        message: records.TaskMessage,
        status: Any,
        attempts: records.Attempts,
        *,
        value: Any = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        done = records.Attempts(
            worker_ids=attempts.worker_ids,
            errors=[*attempts.errors, *([error] if error else [])],
            first_start_ms=attempts.first_start_ms,
            last_start_ms=attempts.last_start_ms,
        )
        finished = timezone.now() if status != TaskResultStatus.READY else None
        result = build(task, message, status, done, finished_at=finished, value=value)
        signals.task_finished.send(type(self.backend), task_result=result)


def flowd_backends() -> dict[str, FlowdBackend]:
    """The ``TASKS`` backends that are FlowdBackends, by alias, in settings order."""
    found: dict[str, FlowdBackend] = {}
    for alias in _task_backends.settings:
        backend = _task_backends[alias]
        if isinstance(backend, FlowdBackend):
            found[alias] = backend
    return found


def task_queue(backend: FlowdBackend, queue_name: str) -> Queue[records.TaskMessage]:
    """The flowd Queue that runs one of the backend's queues."""
    options = backend.flowd_options
    stream = options.stream(queue_name)
    runner = TaskRunner(backend, stream)
    queue: Queue[records.TaskMessage] = Queue(
        backend.client,
        stream=stream,
        group=GROUP,
        job=records.TaskMessage,
        worker=_with_db_cleanup(runner),
        concurrency=options.concurrency,
        claimer=options.claimer(),
        result_ttl=options.result_ttl,
        time_limit=options.time_limit,
    )
    runner.queue = queue
    return queue


def backend_queues(
    names: list[str] | None = None, alias: str | None = None
) -> list[tuple[str, str, Queue[records.TaskMessage]]]:
    """(alias, queue name, Queue) of the task queues to run: ``names`` (default: every
    queue) of backend ``alias`` (default: every FlowdBackend).

    :raises ImproperlyConfigured: no such backend or queue, or bad settings.
    """
    backends = flowd_backends()
    if alias is not None:
        if alias not in backends:
            raise ImproperlyConfigured(
                f"no FlowdBackend {alias!r} in TASKS; FlowdBackends: {sorted(backends) or 'none'}"
            )
        backends = {alias: backends[alias]}
    chosen = []
    for name_of_backend, backend in backends.items():
        queues = backend.flowd_options.queues
        for name in names or queues:
            if name in queues:
                chosen.append((name_of_backend, name, task_queue(backend, name)))
    missing = sorted(set(names or ()) - {name for _, name, _ in chosen})
    if missing:
        raise ImproperlyConfigured(f"no task queue {missing} in the QUEUES of the FlowdBackends")
    return chosen


def queue_from_environ() -> Queue[records.TaskMessage]:
    """The task queue named by ``$FLOWD_DJANGO_TASK_QUEUE`` (``alias:queue``), after
    ``django.setup()``: the target of ``flowd_worker --processes N``'s children."""
    import django

    django.setup()
    alias, _, name = os.environ[TASK_QUEUE_ENV].partition(":")
    return backend_queues([name], alias)[0][2]
