from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse

from flowd.contrib.django import enqueue
from signups.jobs import WelcomeEmail
from signups.models import Signup


def signup(request: HttpRequest) -> JsonResponse:
    with transaction.atomic():
        row = Signup.objects.create(email=request.POST["email"])
        # Sent when the transaction commits: the worker always finds the row,
        # and a rolled-back signup sends nothing.
        enqueue(WelcomeEmail(signup_id=row.pk))
    return JsonResponse({"signup": row.pk}, status=201)
