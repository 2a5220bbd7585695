from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse

from flowd.contrib.django import enqueue
from signups.jobs import WelcomeEmail
from signups.models import Signup
from signups.tasks import count_signups


def signup(request: HttpRequest) -> JsonResponse:
    with transaction.atomic():
        row = Signup.objects.create(email=request.POST["email"])
        # Sent when the transaction commits: the worker always finds the row,
        # and a rolled-back signup sends nothing.
        enqueue(WelcomeEmail(signup_id=row.pk))
        # A Django task: also sent on commit, and its result id is known already.
        counted = count_signups.enqueue()
    return JsonResponse({"signup": row.pk, "count_task": counted.id}, status=201)
