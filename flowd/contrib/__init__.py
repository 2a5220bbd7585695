"""Integrations with web frameworks and monitoring: Django, Flask and Prometheus.

Each integration lives in its own module and needs its framework installed
(``pip install 'flowd-queue[django]'``, ``'flowd-queue[flask]'`` or
``'flowd-queue[prometheus]'``):

- :mod:`flowd.contrib.django`: queues from ``settings.FLOWD``, ``enqueue``
  that waits for the transaction to commit, ``manage.py flowd_worker``;
- :mod:`flowd.contrib.flask`: the ``Flowd`` extension and ``flask flowd worker``;
- :mod:`flowd.contrib.prometheus`: job metrics as hooks, stream gauges, ``serve``.

What the Django and Flask integrations share: the settings format of a queue,
parsed by :class:`QueueRegistry` (in ``flowd/contrib/_settings.py``); their
worker commands run through the same runner as ``flowd worker`` (signals,
``--processes``, exit statuses). This package imports no framework.

A queue's settings are a dict with upper-case keys::

    {
        "STREAM": "emails",                  # default: the queue's name
        "GROUP": "mailers",                  # default: the queue's name
        "JOB": "myapp.jobs.SendEmail",       # required: a flowd.Job dataclass
        "WORKER": "myapp.jobs.send",         # needed to consume, not to enqueue
        "CONCURRENCY": 8,
        "CLAIMER": {"MIN_IDLE_TIME": 30, "MAX_RETRIES": 3, "DLQ_WORKER": "myapp.jobs.dead"},
        "HOUSEKEEPING": True,                # or False, or {"INTERVAL": 60, ...}
        "HOOKS": ["flowd.contrib.prometheus.PrometheusHooks"],
        "MAXLEN": None,                      # Producer(maxlen=...)
        "BLOCK": 2.0,
        "CONSUMER": None,                    # default: a unique host-pid-random name
    }

``JOB``, ``WORKER``, ``DLQ_WORKER`` and each ``HOOKS`` item are dotted import
paths or the objects themselves (a ``Hooks`` class is instantiated without
arguments). ``CLAIMER`` is on by default (``flowd.Claimer()``); ``None`` or
``False`` turns it off. Dotted paths are imported when a queue is first used.
"""

from __future__ import annotations

from ._settings import QueueRegistry, QueueSpec

__all__ = ["QueueRegistry", "QueueSpec"]
