"""Settings of the Django project of tests/contrib/test_django.py (run in subprocesses only).

The environment gives the Redis URL (``FLOWD_REDIS_URL``, required: the tests
never fall back to a default server), the prefix of the stream names
(``FLOWD_TEST_STREAM``) and the SQLite file (``FLOWD_TEST_DB``; with
``FLOWD_TEST_NO_DB`` set, no database at all).
"""

from __future__ import annotations

import os

SECRET_KEY = "flowd-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",  # the dashboard's staff login
    "django.contrib.contenttypes",
    "flowd.contrib.django",
    "tests.contrib.django_project.testapp",
]
try:
    import django.tasks  # noqa: F401 - Django >= 6.0 has the Tasks framework
except ImportError:
    INSTALLED_APPS.insert(0, "django_tasks")  # the backport, and its system checks
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
LOGIN_URL = "/login/"
ROOT_URLCONF = "tests.contrib.django_project.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("FLOWD_TEST_DB", ":memory:"),
    }
}
if os.environ.get("FLOWD_TEST_NO_DB"):
    DATABASES = {}  # Django's dummy backend: there is no transaction to wait for
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

PREFIX = os.environ.get("FLOWD_TEST_STREAM", "django")
JOBS = "tests.contrib.django_project.testapp.jobs"

FLOWD = {
    "URL": os.environ["FLOWD_REDIS_URL"],
    "OPTIONS": {"socket_timeout": 10},
    "QUEUES": {
        "emails": {
            "STREAM": f"{PREFIX}-emails",
            "GROUP": "mailers",
            "JOB": f"{JOBS}.Welcome",
            "WORKER": f"{JOBS}.send_welcome",
            "CONCURRENCY": 4,
            "CLAIMER": {"MIN_IDLE_TIME": 0.3, "MAX_RETRIES": 1, "DLQ_WORKER": f"{JOBS}.dead"},
        },
        "reports": {
            "STREAM": f"{PREFIX}-reports",
            "JOB": f"{JOBS}.Report",
            "WORKER": f"{JOBS}.make_report",
            "CLAIMER": None,
            "HOUSEKEEPING": {"INTERVAL": 30, "CONSUMER_TTL": None},
        },
        # Producer only: another service consumes it. Same job class as "reports".
        "outbox": {"STREAM": f"{PREFIX}-outbox", "JOB": f"{JOBS}.Report", "MAXLEN": 1000},
    },
}

# Django's Tasks framework on flowd: quick retries, so the tests need not wait.
TASKS = {
    "default": {
        "BACKEND": "flowd.contrib.django.tasks.FlowdBackend",
        "QUEUES": ["default", "other"],
        "OPTIONS": {
            "URL": os.environ["FLOWD_REDIS_URL"],
            "CLIENT_OPTIONS": {"socket_timeout": 10},
            "STREAM_PREFIX": f"{PREFIX}-tasks",
            "MAX_RETRIES": 2,
            "MIN_IDLE_TIME": 0.3,
            "BACKOFF": {"INITIAL": 0.1, "FACTOR": 1, "MAXIMUM": 0.1, "JITTER": 0},
            "CONCURRENCY": 4,
        },
    }
}
