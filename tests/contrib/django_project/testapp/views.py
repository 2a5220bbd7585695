from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse

from flowd.contrib.django import enqueue
from tests.contrib.django_project.testapp.jobs import Report, Welcome
from tests.contrib.django_project.testapp.models import Signup
from tests.contrib.django_project.testapp.tasks import welcome


def signup(request: HttpRequest) -> JsonResponse:
    """Write a row and queue its welcome mail in one transaction; ``?fail=1`` rolls back."""
    email = request.POST["email"]
    with transaction.atomic():
        Signup.objects.create(email=email)
        queued = enqueue(Welcome(email=email))  # None: it waits for the commit
        if request.GET.get("fail"):
            raise RuntimeError("something failed after the write: roll back")
    return JsonResponse({"id_before_commit": queued}, status=201)


def report(request: HttpRequest) -> JsonResponse:
    """No transaction: the job is sent at once and its id is known."""
    return JsonResponse({"id": enqueue(Report(n=int(request.GET["n"])), queue="reports")})


def task_signup(request: HttpRequest) -> JsonResponse:
    """Write a row and enqueue its ``welcome`` task in one transaction (``?fail=1`` rolls
    back): the result id is known at once, the task is sent on commit."""
    email = request.POST["email"]
    with transaction.atomic():
        Signup.objects.create(email=email)
        result = welcome.enqueue(email)
        if request.GET.get("fail"):
            raise RuntimeError("something failed after the write: roll back")
    return JsonResponse({"id": result.id, "status": str(result.status)}, status=201)
