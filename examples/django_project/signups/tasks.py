"""A task of the signups app on Django's Tasks framework (``settings.TASKS``), run by
``manage.py flowd_worker`` like the flowd jobs."""

from __future__ import annotations

try:
    from django.tasks import task
except ImportError:  # Django < 6.0: pip install django-tasks
    from django_tasks import task  # type: ignore[no-redef]


@task()
def count_signups() -> int:
    from signups.models import Signup

    count = Signup.objects.count()
    print(f"{count} signups so far", flush=True)
    return count
