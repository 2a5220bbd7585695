"""Settings of bench_django_tasks.py's project, for one backend at a time.

The environment chooses (bench_django_tasks.py sets it for every process it starts):

- ``BENCH_TASKS_BACKEND``: ``flowd``, ``db`` (django-tasks-db) or ``rq`` (django-tasks-rq);
- ``BENCH_DATABASE``: ``sqlite`` (the file ``$BENCH_SQLITE``) or ``postgres``
  (``$BENCH_PG_NAME`` on ``$BENCH_PG_HOST``:``$BENCH_PG_PORT`` as ``$BENCH_PG_USER``);
- ``BENCH_REDIS_URL``: the private redis-server, ``redis://host:port`` without a database
  (flowd uses database 0, rq 1, and the start marker 2).

Each backend is configured with its own defaults: nothing is tuned for the benchmark.
"""

from __future__ import annotations

import os

SECRET_KEY = "flowd-benchmark-only"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

BACKEND = os.environ["BENCH_TASKS_BACKEND"]
REDIS_URL = os.environ["BENCH_REDIS_URL"]


def redis_db(number: int) -> str:
    """The private server's URL for one database number."""
    return f"{REDIS_URL}/{number}"


try:
    import django.tasks  # noqa: F401 - Django >= 6.0 has the Tasks framework

    INSTALLED_APPS: list[str] = []
except ImportError:
    INSTALLED_APPS = ["django_tasks"]  # the backport

if os.environ.get("BENCH_DATABASE", "sqlite") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["BENCH_PG_NAME"],
            "HOST": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("BENCH_PG_PORT", "5432"),
            "USER": os.environ.get("BENCH_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("BENCH_PG_PASSWORD", ""),
        }
    }
else:
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["BENCH_SQLITE"]}
    }

if BACKEND == "flowd":
    INSTALLED_APPS.append("flowd.contrib.django")
    # flowd's defaults: RESULT_TTL a day (results on), 3 retries, concurrency 8.
    TASKS = {
        "default": {
            "BACKEND": "flowd.contrib.django.tasks.FlowdBackend",
            "OPTIONS": {"URL": redis_db(0)},
        }
    }
elif BACKEND == "db":
    INSTALLED_APPS.append("django_tasks_db")
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
elif BACKEND == "rq":
    INSTALLED_APPS += ["django_rq", "django_tasks_rq"]
    TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default"]}}
    RQ_QUEUES = {"default": {"URL": redis_db(1)}}
else:
    raise ValueError(f"BENCH_TASKS_BACKEND must be flowd, db or rq, not {BACKEND!r}")
