"""flowd as a backend of Django's Tasks framework: ``@task`` functions on flowd streams.

Works with ``django.tasks`` (Django >= 6.0) and with the ``django_tasks`` backport
(Django 4.2-5.2, ``pip install django-tasks``; add ``"django_tasks"`` to
``INSTALLED_APPS`` there)::

    INSTALLED_APPS = [..., "flowd.contrib.django"]
    TASKS = {"default": {
        "BACKEND": "flowd.contrib.django.tasks.FlowdBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"URL": "redis://localhost:6379/0", "RESULT_TTL": 86400,
                    "MAX_RETRIES": 3, "BACKOFF": {"INITIAL": 1, "FACTOR": 2, "MAXIMUM": 600},
                    "CONCURRENCY": 8, "ENQUEUE_ON_COMMIT": True},
    }}

Each Django queue is a flowd stream ``<STREAM_PREFIX>:<queue>`` (``django-tasks:emails``)
read by the consumer group ``django-tasks``; every task travels as one
:class:`~flowd.contrib.django.tasks.records.TaskMessage` (its module path, its
arguments as JSON, its queue, priority and times). ``python manage.py flowd_worker``
runs them (all task queues by default, ``--queue emails`` for some).

- The result id is the backend's own, made before anything is sent, so
  ``enqueue()`` returns it even inside ``transaction.atomic()``, where the task is
  sent on commit (never on a rollback; ``ENQUEUE_ON_COMMIT: False`` sends at once).
  The one script that writes the job also writes ``alias:<result id>`` (the flowd
  id, which flowd's result lookup follows) and a copy of the message.
- ``run_after`` is a delayed flowd job: it enters the stream when Redis's clock
  reaches it.
- A failed run is retried after ``BACKOFF``'s delay, at most ``MAX_RETRIES`` times;
  then the task is FAILED and its message is in the stream's dead letters
  (``flowd dlq``, the dashboard). A task path that no longer imports, or no longer
  names a task, is dead-lettered at once with that reason.
- ``TaskResult.errors`` and ``worker_ids`` come from one record per attempt (the
  worker id is the flowd consumer that ran it).
- Priorities: ``supports_priority = True``. A task's priority (-100 to 100) picks
  its flowd band (above 0, 0, below 0; see :mod:`flowd.flow.priorities`): the
  worker starts waiting tasks of a higher band first, in enqueue order within one.

Other ``OPTIONS``: ``CLIENT_OPTIONS`` (``redis.Redis.from_url`` keywords),
``MIN_IDLE_TIME`` (seconds before a crashed worker's task runs again, 30),
``TIME_LIMIT`` (seconds a run may take), ``STREAM_PREFIX`` (``django-tasks``; give
each backend of one Redis its own). Mistakes raise ``ImproperlyConfigured`` when the
backend is used and are errors ``flowd.E002`` of ``manage.py check``.
"""

from __future__ import annotations

from .backend import FlowdBackend

__all__ = ["FlowdBackend"]
