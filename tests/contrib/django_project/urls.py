from __future__ import annotations

import redis
from django.conf import settings
from django.urls import include, path

from flowd.dashboard import Dashboard
from flowd.dashboard.mount import django_urls
from tests.contrib.django_project.settings import PREFIX
from tests.contrib.django_project.testapp import views

# A client of its own: the `config` scenario breaks FLOWD on purpose, and Django's
# checks import this module (get_client() would raise there).
dashboard = Dashboard(redis.Redis.from_url(settings.FLOWD["URL"]), [f"{PREFIX}-emails"])

urlpatterns = [
    path("signup/", views.signup),
    path("report/", views.report),
    path("tasks/signup/", views.task_signup),
    # The dashboard, for staff only; anonymous users go to LOGIN_URL.
    path(
        "ops/flowd/",
        include(django_urls(dashboard, login_url="/login/")),
    ),
]
