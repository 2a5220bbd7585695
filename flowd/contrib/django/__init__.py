"""flowd for Django: queues from settings, enqueue on commit, ``manage.py flowd_worker``.

Add the app and describe your queues in the settings::

    INSTALLED_APPS = [..., "flowd.contrib.django"]

    FLOWD = {
        "URL": "redis://localhost:6379/0",
        "OPTIONS": {"socket_timeout": 10},   # optional: redis.Redis.from_url keywords
        "QUEUES": {
            "emails": {
                "STREAM": "emails",
                "GROUP": "mailers",
                "JOB": "myapp.jobs.SendEmail",
                "WORKER": "myapp.jobs.send",
                "CONCURRENCY": 8,
                "CLAIMER": {"MIN_IDLE_TIME": 30, "MAX_RETRIES": 3},
            },
        },
    }

Install it with ``pip install 'flowd-queue[django]'``. The other queue keys
are those of :mod:`flowd.contrib` (``HOOKS``,
``HOUSEKEEPING``, ``MAXLEN``...). ``settings.FLOWD`` is read once, on first
use (and again after ``override_settings`` changes it); mistakes raise
``ImproperlyConfigured`` and are reported by ``manage.py check``.

Enqueue from a view with :func:`enqueue`; by default the job is sent when
the surrounding transaction commits, and not at all if it rolls back. Run the
workers with ``python manage.py flowd_worker [queue ...]``. Jobs run on worker
threads; database connections are cleaned up around each job, as Django does
around each request.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import close_old_connections, transaction

from ..._redis.urls import DEFAULT_URL
from ...errors import ConfigurationError
from ...job import Job
from ...producer import Producer
from ...queue import Queue
from ...task import Task
from .._settings import QueueRegistry

__all__ = [
    "check_settings",
    "enqueue",
    "enqueue_bulk",
    "get_client",
    "get_producer",
    "get_queue",
    "queue_names",
]

T = TypeVar("T")

#: The environment variable that names the queue of a ``--processes`` child.
QUEUE_ENV = "FLOWD_DJANGO_QUEUE"
_SETTING = "FLOWD"
_TOP_KEYS = frozenset({"URL", "OPTIONS", "QUEUES"})
_TASK_BACKEND = "flowd.contrib.django.tasks.FlowdBackend"

_lock = threading.Lock()
_registry: QueueRegistry | None = None


def _with_db_cleanup(worker: Callable[[Task[Any]], object]) -> Callable[[Task[Any]], object]:
    """Close unusable or expired database connections around each job, like a request."""

    @functools.wraps(worker)
    def run(task: Task[Any]) -> object:
        close_old_connections()
        try:
            return worker(task)
        finally:
            close_old_connections()

    return run


def _load() -> QueueRegistry:
    from django.conf import settings

    raw = getattr(settings, _SETTING, None)
    if raw is None:
        raise ImproperlyConfigured(
            "settings.FLOWD is missing: add FLOWD = {'URL': ..., 'QUEUES': {...}}"
        )
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"settings.FLOWD must be a dict, not {type(raw).__name__}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"settings.FLOWD has unknown keys {unknown}; expected some of {sorted(_TOP_KEYS)}"
        )
    try:
        return QueueRegistry(
            raw.get("URL", DEFAULT_URL),
            raw.get("QUEUES", {}),
            where="FLOWD['QUEUES']",
            client_options=raw.get("OPTIONS"),
            wrap=_with_db_cleanup,
        )
    except ConfigurationError as exc:
        raise ImproperlyConfigured(f"settings.FLOWD: {exc}") from exc


def registry() -> QueueRegistry:
    """The queues of ``settings.FLOWD``, read on the first call."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = _load()
        return _registry


def _reset(*, setting: str, **kwargs: Any) -> None:
    """Forget the settings when ``override_settings`` changes ``FLOWD``."""
    global _registry
    if setting == _SETTING:
        with _lock:
            _registry = None


setting_changed.connect(_reset, dispatch_uid="flowd.contrib.django.reset")


def _configured(call: Callable[..., T], *args: Any) -> T:
    try:
        return call(*args)
    except ConfigurationError as exc:
        raise ImproperlyConfigured(str(exc)) from exc


def get_client() -> Any:
    """The ``redis.Redis`` client of ``FLOWD['URL']``, shared by every queue of the process."""
    return _configured(lambda: registry().client)


def get_queue(name: str) -> Queue[Any]:
    """The :class:`flowd.Queue` of ``FLOWD['QUEUES'][name]``; the same object on every call.

    Use it to run a queue in the web process (``get_queue(name).run()``, once
    per process) or to ``drain()`` it from a script; ``flowd_worker`` uses it too.

    :raises ImproperlyConfigured: no such queue, or bad settings (e.g. no ``WORKER``).
    """
    return _configured(lambda: registry().queue(name))


def get_producer(name: str) -> Producer:
    """The :class:`flowd.Producer` of ``FLOWD['QUEUES'][name]``; the same object on every call.

    Its ``enqueue`` sends at once, whatever the transaction; prefer :func:`enqueue`
    in code that writes to the database.
    """
    return _configured(lambda: registry().producer(name))


def queue_names() -> list[str]:
    """The names of the configured queues that have a ``WORKER``, in settings order."""
    return _configured(lambda: registry().consumable())


def _after_commit(send: Callable[[], T], using: str | None) -> T | None:
    """Run ``send`` when the transaction commits (now, outside one); its result if it ran."""
    connection = transaction.get_connection(using)
    if connection.settings_dict.get("ENGINE") == "django.db.backends.dummy":
        return send()  # no database configured: there is no transaction to wait for
    result: list[T] = []
    transaction.on_commit(lambda: result.append(send()), using=using)
    return result[0] if result else None


def enqueue(
    job: Job, queue: str | None = None, *, on_commit: bool = True, using: str | None = None
) -> str | None:
    """Send ``job`` to a configured queue, by default once the current transaction commits.

    Inside ``transaction.atomic()`` the job is sent by ``transaction.on_commit``:
    after the commit, and never if the block rolls back, so a worker never sees
    a job for a write that did not happen. Then the call returns None (the id
    is not known yet). Outside a transaction, or with ``on_commit=False``, the
    job is sent at once and its stream id is returned. A Redis error at commit
    time is raised from the end of the ``atomic`` block, after the commit.

    The job is checked and encoded now: a bad value raises here, not at commit.
    Its fields are read again when it is sent, so do not change it meanwhile.

    :param queue: the queue's name; by default the one queue whose ``JOB`` is
        the job's class.
    :param using: the database alias whose transaction to wait for.
    :raises flowd.EncodeError: the job does not fit the queue's ``JOB``.
    :raises ImproperlyConfigured: unknown queue, or no single queue for the job's class.
    """
    reg = registry()
    name = _configured(reg.queue_for, job, queue)
    job.to_fields()
    producer = _configured(reg.producer, name)
    if not on_commit:
        return producer.enqueue(job)
    return _after_commit(lambda: producer.enqueue(job), using)


def enqueue_bulk(
    jobs: Iterable[Job],
    queue: str | None = None,
    *,
    on_commit: bool = True,
    using: str | None = None,
) -> list[str] | None:
    """Send several jobs to one queue in pipelined round trips; like :func:`enqueue`.

    :returns: their ids, or None when they wait for the transaction to commit.
    """
    batch = list(jobs)
    reg = registry()
    names = {_configured(reg.queue_for, job, queue) for job in batch}
    if len(names) > 1:
        raise ImproperlyConfigured(f"these jobs belong to several queues: {sorted(names)}")
    for job in batch:
        job.to_fields()
    if not names:
        return []
    producer = _configured(reg.producer, names.pop())
    if not on_commit:
        return producer.enqueue_bulk(batch)
    return _after_commit(lambda: producer.enqueue_bulk(batch), using)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """System check ``flowd.E001``: ``settings.FLOWD`` is valid and every path imports.

    A project that uses flowd only through ``TASKS`` (a FlowdBackend) needs no
    ``FLOWD``; the backend's own check covers its settings.
    """
    from django.conf import settings
    from django.core.checks import Error

    if getattr(settings, _SETTING, None) is None and _uses_task_backend(settings):
        return []
    try:
        found = _load().check()
    except ImproperlyConfigured as exc:
        found = [str(exc)]
    return [Error(message, id="flowd.E001") for message in found]


def _uses_task_backend(settings: Any) -> bool:
    """Whether a ``TASKS`` backend is flowd's (by its path: nothing is imported)."""
    tasks = getattr(settings, "TASKS", None)
    if not isinstance(tasks, Mapping):
        return False
    return any(
        isinstance(entry, Mapping) and entry.get("BACKEND") == _TASK_BACKEND
        for entry in tasks.values()
    )


def queue_from_environ() -> Queue[Any]:
    """The queue named by ``$FLOWD_DJANGO_QUEUE``, after ``django.setup()``.

    The ``MODULE:ATTR`` target of the children of ``flowd_worker --processes N``.
    """
    import django

    django.setup()
    return get_queue(os.environ[QUEUE_ENV])
