from __future__ import annotations

from django.urls import path

from tests.django_project.testapp import views

urlpatterns = [
    path("signup/", views.signup),
    path("report/", views.report),
]
