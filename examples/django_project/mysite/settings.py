"""Settings of the example project: the flowd part is INSTALLED_APPS, FLOWD and TASKS.

Run from this directory, with a Redis at ``$FLOWD_REDIS_URL`` (default
``redis://localhost:6379/0``)::

    python manage.py migrate
    python manage.py runserver                   # the web app
    curl -X POST -d email=a@example.com localhost:8000/signup/
    python manage.py flowd_worker                # the worker (Ctrl-C stops it)
    python manage.py flowd_worker --burst        # or: process the backlog, then exit
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]  # testserver: Django's test client
USE_TZ = True
ROOT_URLCONF = "mysite.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
MIDDLEWARE: list[str] = []  # a JSON API without sessions or CSRF, to keep the example short

INSTALLED_APPS = [
    "flowd.contrib.django",  # the flowd_worker command and a check of FLOWD
    "signups",
]
try:
    import django.tasks  # noqa: F401 - Django >= 6.0 has the Tasks framework
except ImportError:
    INSTALLED_APPS.insert(0, "django_tasks")  # the backport: pip install django-tasks

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB", str(BASE_DIR / "db.sqlite3")),
    }
}

FLOWD = {
    "URL": os.environ.get("FLOWD_REDIS_URL", "redis://localhost:6379/0"),
    "QUEUES": {
        "welcome": {
            "STREAM": "welcome-emails",
            "GROUP": "mailers",
            "JOB": "signups.jobs.WelcomeEmail",
            "WORKER": "signups.jobs.send_welcome",
            "CONCURRENCY": 8,
            "CLAIMER": {"MIN_IDLE_TIME": 60, "MAX_RETRIES": 5},
        },
    },
}

# Django's Tasks framework (@task functions) on flowd: one stream per queue.
TASKS = {
    "default": {
        "BACKEND": "flowd.contrib.django.tasks.FlowdBackend",
        "QUEUES": ["default"],
        "OPTIONS": {
            "URL": os.environ.get("FLOWD_REDIS_URL", "redis://localhost:6379/0"),
            "MAX_RETRIES": 3,
            "BACKOFF": {"INITIAL": 1, "FACTOR": 2, "MAXIMUM": 600},
        },
    }
}
