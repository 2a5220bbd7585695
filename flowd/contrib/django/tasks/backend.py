"""``FlowdBackend``: the Tasks framework's backend interface on flowd streams."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

import redis
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from ...._redis.records import alias_ttl_ms
from ...._redis.timeutil import to_ms
from ....errors import ConfigurationError
from ....flow.priorities import band_stream, band_streams
from ....results import Results
from .. import _after_commit
from . import records
from ._compat import (
    BaseTaskBackend,
    TaskResultDoesNotExist,
    TaskResultStatus,
    module_path,
    plain_json,
    signals,
)
from .options import GROUP, TaskOptions
from .results import build, import_task, task_result

__all__ = ["FlowdBackend"]


class FlowdBackend(BaseTaskBackend):
    """Runs ``@task`` functions on flowd: one stream per queue, ``manage.py flowd_worker``
    consumes them (see :mod:`flowd.contrib.django.tasks`)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    # A task's priority (-100 to 100) picks its flowd band: above 0, 0, below 0; the
    # worker starts waiting tasks of higher bands first (flowd.flow.priorities).
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        # Bad settings are kept, not raised: the framework builds backends while it
        # imports tasks and runs checks, and `manage.py check` must report them.
        self._problem: str | None = None
        self._options: TaskOptions | None = None
        try:
            self._options = TaskOptions.parse(alias, params)
        except ConfigurationError as exc:
            self._problem = str(exc)
        self._lock = threading.Lock()
        self._client: Any = None

    @property
    def flowd_options(self) -> TaskOptions:
        """The checked settings.

        :raises ImproperlyConfigured: they are wrong (as ``manage.py check`` says).
        """
        if self._options is None:
            raise ImproperlyConfigured(self._problem)
        return self._options

    @property
    def client(self) -> Any:
        """The ``redis.Redis`` client of ``OPTIONS['URL']`` (made on first use)."""
        options = self.flowd_options
        with self._lock:
            if self._client is None:
                try:
                    self._client = redis.Redis.from_url(options.url, **options.client_options)
                except (TypeError, ValueError) as exc:
                    raise ImproperlyConfigured(
                        f"TASKS[{self.alias!r}]: cannot build a Redis client: {exc}"
                    ) from exc
            return self._client

    def stream(self, queue_name: str) -> str:
        """The flowd stream of one of this backend's queues."""
        return self.flowd_options.stream(queue_name)

    @property
    def key_ttl_ms(self) -> int:
        """How long a task's result-id keys live after its last start: as its result,
        and at least a day (as flowd keeps a moved job's old id)."""
        return alias_ttl_ms(to_ms(self.flowd_options.result_ttl))

    def check(self, **kwargs: Any) -> Iterable[Any]:
        """``manage.py check``: the settings' mistakes, as errors ``flowd.E002``."""
        yield from super().check(**kwargs)
        if self._problem is not None:
            yield checks.Error(self._problem, id="flowd.E002")
            return
        try:
            self.client  # noqa: B018 - builds the client from the URL and its options
        except ImproperlyConfigured as exc:
            yield checks.Error(str(exc), id="flowd.E002")

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Send the task (on commit, with ``ENQUEUE_ON_COMMIT``); its READY result, whose
        id is final even before the send."""
        options = self.flowd_options
        self.validate_task(task)
        now = timezone.now()
        message = records.TaskMessage(
            task=module_path(task.func),
            result_id=records.new_result_id(),
            args=json.dumps(plain_json(list(args)), separators=(",", ":")),
            kwargs=json.dumps(plain_json(dict(kwargs)), separators=(",", ":")),
            queue=task.queue_name,
            backend=self.alias,
            priority=task.priority,
            enqueued_at=now,
            run_after=task.run_after,
        )
        fields = message.to_fields()  # a bad value raises here, not at commit
        result = build(task, message, TaskResultStatus.READY, records.Attempts([], [], None, None))
        due = None if task.run_after is None else int(task.run_after.timestamp() * 1000)
        stream = band_stream(options.stream(task.queue_name), task.priority)

        def send() -> None:
            records.send(self.client, stream, message.result_id, fields, due, self.key_ttl_ms)
            signals.task_enqueued.send(type(self), task_result=result)

        if options.enqueue_on_commit:
            _after_commit(send, None)
        else:
            send()
        return result

    def get_result(self, result_id: str) -> Any:
        """The task's result as Redis has it now.

        :raises TaskResultDoesNotExist: no task of this backend has that id (or its
            result expired).
        """
        options = self.flowd_options
        streams = [band for name in options.queues for band in band_streams(options.stream(name))]
        with self.client.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.get(records.task_key(stream, result_id))
                pipe.lrange(records.attempts_key(stream, result_id), 0, -1)
            replies = pipe.execute()
        for index, stream in enumerate(streams):
            message = records.read_message(replies[2 * index])
            if message is None or message.result_id != result_id:
                continue
            job = Results(self.client, stream, group=GROUP).get(result_id)
            if job is None:
                break
            try:
                task = import_task(message.task)
            except (ImportError, TypeError) as exc:
                raise TaskResultDoesNotExist(
                    f"task result {result_id!r}: its task {message.task!r} is gone ({exc})"
                ) from exc
            if task.priority != message.priority:  # as it was enqueued
                task = task.using(priority=message.priority)
            attempts = records.Attempts.parse(replies[2 * index + 1])
            return task_result(task, message, job, attempts)
        raise TaskResultDoesNotExist(result_id)
